from contract import StoreContract
from session_contract import SessionContract


class TestPostgresStore(StoreContract):
    backend = "postgresql"


class TestPostgresSession(SessionContract):
    backend = "postgresql"
