"""Tracked models: their inserts, updates and deletes become events (filled in below)."""

from __future__ import annotations

from collections.abc import Callable

LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = ()
