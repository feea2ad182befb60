from contract import StoreContract
from session_contract import SessionContract


class TestSqliteFileStore(StoreContract):
    backend = "sqlite-file"


class TestSqliteFileSession(SessionContract):
    backend = "sqlite-file"
