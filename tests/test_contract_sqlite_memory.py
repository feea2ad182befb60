from contract import StoreContract
from session_contract import SessionContract


class TestSqliteMemoryStore(StoreContract):
    backend = "sqlite-memory"


class TestSqliteMemorySession(SessionContract):
    backend = "sqlite-memory"
