from jobwire_server.store.sqlite.store import SqliteJobStore

__all__ = ["SqliteJobStore"]
