from contract import StoreContract


class TestSqliteFileStore(StoreContract):
    backend = "sqlite-file"
