from contract import StoreContract
from session_contract import SessionContract


class TestMariaDBStore(StoreContract):
    backend = "mysql"


class TestMariaDBSession(SessionContract):
    backend = "mysql"
