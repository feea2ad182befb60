from contract import StoreContract


class TestPostgresStore(StoreContract):
    backend = "postgresql"
