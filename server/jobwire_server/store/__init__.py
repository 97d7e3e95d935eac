"""Persistence: the `JobStore` protocol and its implementations. All SQL lives below this package."""

from jobwire_server.store.base import ClaimParams, Committed, InsertResult, JobStore

__all__ = ["ClaimParams", "Committed", "InsertResult", "JobStore"]
