from contract import StoreContract


class TestMariaDBStore(StoreContract):
    backend = "mysql"
