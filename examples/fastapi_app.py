"""A FastAPI app with the session extension: one SQLAlchemy session per request.

Run it after `pip install -e ".[examples]"` (fastapi, httpx; uvicorn to serve):

    python examples/fastapi_app.py            # a walkthrough: requests through the app, in-process
    python examples/fastapi_app.py --serve    # serve it on http://127.0.0.1:8000 (docs at /docs)

The app keeps posts and comments in the store and its own table of notifications in plain
SQLAlchemy, all on one SQLite file (`app.db`, recreated by the walkthrough; the archive goes
to `app-archive/`). What it shows:

- `pq.enable(Session)` and `pq.enable(AsyncSession)` once, at start-up (the lifespan), on
  the same database: the async maker is given the sync engine (`sync_engine=`), so both
  share one store (one runtime, one cache);
- sync routes (`def`) take a `Session` dependency, async routes (`async def`) an
  `AsyncSession` one; each writes through `pq.store(session)` and commits with the
  session: the events and the app's own rows commit together, or not at all;
- a request that raises after writing (an HTTPException, or any error) commits nothing:
  the dependency closes its session, which rolls back the app's rows and drops the
  events the request made;
- the store's typed errors mapped to HTTP statuses (404, 409, 422), and the history of a
  post read through a route.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

try:
    from fastapi import Depends, FastAPI, Header, HTTPException, Request
    from fastapi.responses import JSONResponse
except ImportError:
    raise SystemExit('fastapi_app.py needs FastAPI: pip install -e ".[examples]"') from None
from pydantic import BaseModel, Field
from sqlalchemy import String, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import parquedb_orm as pq


class Base(DeclarativeBase):
    pass


class Notification(Base):
    """The app's own table, plain SQLAlchemy: it commits with the store's events."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))


class PostIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    tags: list[str] = []


class PostPatch(BaseModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    tags: list[str] | None = None
    expected_version: int | None = None  # optimistic locking: 409 if the post moved on


class CommentIn(BaseModel):
    body: str = Field(min_length=1, max_length=2000)


# ---------------------------------------------------------------- the app and its sessions
def create_app(db_file: str | Path = "app.db", archive: str | Path = "app-archive") -> FastAPI:
    path = Path(db_file).resolve()
    # WAL + synchronous=NORMAL, the store's own settings for a SQLite file (docs/durability.md);
    # WAL is a property of the file, so the aiosqlite connections use it too
    engine = pq.sqlite_settings(create_engine(f"sqlite:///{path}"))
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    Base.metadata.create_all(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # enable() prepares the store's schema (sync work): off the event loop
        policy = pq.FlushPolicy(mode="background")  # flushing to Parquet never runs in a request
        app.state.Session = sessionmaker(engine, expire_on_commit=False)
        app.state.AsyncSession = async_sessionmaker(async_engine, expire_on_commit=False)
        app.state.handle = await asyncio.to_thread(pq.enable, app.state.Session, archive=str(archive), policy=policy)
        async_handle = await asyncio.to_thread(
            pq.enable, app.state.AsyncSession, archive=str(archive), policy=policy, sync_engine=engine
        )
        try:
            yield
        finally:
            async_handle.close()
            app.state.handle.close()
            await async_engine.dispose()
            engine.dispose()

    app = FastAPI(title="parquedb-orm blog", lifespan=lifespan)
    add_routes(app)
    return app


def db_session(request: Request) -> Iterator[Session]:
    """One session per request; closed at the end, which rolls back whatever was not committed."""
    with request.app.state.Session() as session:
        yield session


async def async_db_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.AsyncSession() as session:
        yield session


SessionDep = Annotated[Session, Depends(db_session)]
AsyncSessionDep = Annotated[AsyncSession, Depends(async_db_session)]
User = Annotated[str, Header(alias="X-User", pattern=r"^[a-z][a-z0-9_-]{0,31}$")]


def ref(sqid: str) -> str:
    return f"posts/{sqid}"


def add_routes(app: FastAPI) -> None:
    # the store's typed errors as HTTP statuses
    @app.exception_handler(pq.EntityNotFoundError)
    async def not_found(request: Request, exc: pq.EntityNotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(pq.VersionConflictError)
    async def conflict(request: Request, exc: pq.VersionConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(pq.ValidationError)
    async def invalid(request: Request, exc: pq.ValidationError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # -------------------------------------------------------------- sync routes: Session
    @app.post("/posts", status_code=201)
    def create_post(body: PostIn, session: SessionDep, user: User) -> dict[str, Any]:
        post = pq.store(session).create("posts", {"$type": "Post", **body.model_dump(), "published": False}, actor=user)
        session.add(Notification(text=f"{user} drafted {body.title!r}"))
        session.commit()  # the post's event and the notification, in one transaction
        return post

    @app.get("/posts/{sqid}")
    def get_post(sqid: str, session: SessionDep) -> dict[str, Any]:
        post = pq.store(session).get("posts", sqid)
        if post is None:
            raise HTTPException(404, f"no post {sqid}")
        return post

    @app.patch("/posts/{sqid}")
    def update_post(sqid: str, body: PostPatch, session: SessionDep, user: User) -> dict[str, Any]:
        changes = body.model_dump(exclude_unset=True, exclude={"expected_version"})
        if not changes:
            raise HTTPException(422, "nothing to change: give title or tags")
        post = pq.store(session).update(
            "posts", sqid, {"$set": changes}, expected_version=body.expected_version, actor=user
        )
        session.commit()
        return post

    @app.post("/posts/{sqid}/publish")
    def publish(sqid: str, session: SessionDep, user: User) -> dict[str, Any]:
        post = pq.store(session).update("posts", sqid, {"$set": {"published": True}}, actor=user)
        session.add(Notification(text=f"{user} published {post['title']!r}"))
        # checked after the writes on purpose: whatever raises after them (a rule, a failing
        # call to another service), the session closes uncommitted and nothing of it stays
        if not post["tags"]:
            raise HTTPException(409, "a post needs at least one tag to be published")
        session.commit()
        return post

    @app.get("/posts/{sqid}/history")
    def post_history(sqid: str, session: SessionDep) -> list[dict[str, Any]]:
        return [
            {"op": h["op"], "version": h["version"], "actor": h["actor"], "at": h["ts"].isoformat(), "data": h["data"]}
            for h in pq.store(session).history(ref(sqid))
        ]

    @app.get("/notifications")
    def notifications(session: SessionDep) -> list[str]:
        return list(session.scalars(select(Notification.text).order_by(Notification.id)))

    # -------------------------------------------------------------- async routes: AsyncSession
    @app.post("/posts/{sqid}/comments", status_code=201)
    async def add_comment(sqid: str, body: CommentIn, session: AsyncSessionDep, user: User) -> dict[str, Any]:
        store = pq.store(session)
        comment = await store.create("comments", {"$type": "Comment", "body": body.body}, actor=user)
        await store.link(comment["$id"], "on", ref(sqid), reverse="comments", actor=user)
        if "http://" in body.body:
            # a bug or a service that is down, after the writes: a 500, and nothing committed
            raise RuntimeError("the link checker is not reachable")
        await session.commit()
        return comment

    @app.get("/posts/{sqid}/comments")
    async def comments(sqid: str, session: AsyncSessionDep) -> list[dict[str, Any]]:
        return await pq.store(session).related(ref(sqid), "comments", direction="inbound")

    @app.get("/posts")
    async def list_posts(session: AsyncSessionDep, published: bool | None = None) -> list[dict[str, Any]]:
        query = {} if published is None else {"published": published}
        return await pq.store(session).find("posts", query, sort={"title": 1}, limit=100)


# ---------------------------------------------------------------- the walkthrough
def walkthrough(db_file: Path, archive: Path) -> None:
    from fastapi.testclient import TestClient

    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(archive, ignore_errors=True)

    def show(r: Any, what: str = "") -> Any:
        print(f"{r.request.method} {r.request.url.path} -> {r.status_code}{' ' + what if what else ''}")
        return r.json() if r.headers.get("content-type") == "application/json" else r.text

    with TestClient(create_app(db_file, archive), raise_server_exceptions=False) as client:
        ann, bob = {"X-User": "ann"}, {"X-User": "bob"}
        post = show(client.post("/posts", json={"title": "Hello", "tags": []}, headers=ann))
        print(f"  created {post['$id']} v{post['version']}: {post['title']!r}")
        sqid = post["$id"].split("/")[1]
        post = show(client.patch(f"/posts/{sqid}", json={"title": "Hello, FastAPI", "expected_version": 1},
                                 headers=ann))  # fmt: skip
        print(f"  v{post['version']}: {post['title']!r}")
        stale = show(client.patch(f"/posts/{sqid}", json={"title": "stale", "expected_version": 1}, headers=bob),
                     "(a stale expected_version)")  # fmt: skip
        print(f"  {stale['detail']}")
        failed = show(client.post(f"/posts/{sqid}/publish", headers=ann), "(raises after writing)")
        print(f"  {failed['detail']}")
        show(client.patch(f"/posts/{sqid}", json={"tags": ["intro"]}, headers=ann))
        post = show(client.post(f"/posts/{sqid}/publish", headers=ann))
        print(f"  v{post['version']}: published={post['published']}, tags={post['tags']}")
        comment = show(client.post(f"/posts/{sqid}/comments", json={"body": "Welcome!"}, headers=bob), "(async)")
        print(f"  {comment['$id']} by {comment['createdBy']}")
        show(client.post(f"/posts/{sqid}/comments", json={"body": "see http://x.test"}, headers=bob),
             "(async, raises after writing)")  # fmt: skip
        got = show(client.get(f"/posts/{sqid}/comments"), "(async)")
        print(f"  comments: {[c['body'] for c in got]}")
        got = show(client.get("/posts", params={"published": True}), "(async find)")
        print(f"  published posts: {[p['title'] for p in got]}")
        show(client.get("/posts/nosuch0"), "(no such post)")
        history = show(client.get(f"/posts/{sqid}/history"))
        print(f"  history of {post['$id']}, oldest first ({len(history)} events):")
        for h in history:
            print(f"    {h['op']:<6} v{h['version'] or '-'} by {h['actor']}")
        print(f"  notifications (the app's own table): {show(client.get('/notifications'))}")
        result = client.app.state.handle.flush()  # type: ignore[attr-defined]
        print(f"flushed {result.events} events and {result.rel_events} link events to {archive}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="serve the app with uvicorn instead of the walkthrough")
    parser.add_argument("--db", type=Path, default=Path("app.db"), help="SQLite file (the walkthrough recreates it)")
    parser.add_argument("--archive", type=Path, default=Path("app-archive"), help="archive folder")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.serve:
        import uvicorn

        uvicorn.run(create_app(args.db, args.archive), host="127.0.0.1", port=args.port)
    else:
        walkthrough(args.db, args.archive)


if __name__ == "__main__":
    main()
