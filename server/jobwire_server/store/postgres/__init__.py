from jobwire_server.store.postgres.store import PostgresJobStore, RemoteSignal, TailCursor

__all__ = ["PostgresJobStore", "RemoteSignal", "TailCursor"]
