from contract import StoreContract


class TestSqliteMemoryStore(StoreContract):
    backend = "sqlite-memory"
