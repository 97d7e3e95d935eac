"""Retry policy: exponential backoff with half jitter, bounded per kind. Defined with the handler
API (`jobwire.worker`), where a kind declares it; the domain uses the same class."""

from jobwire.worker.retry import RetryPolicy

__all__ = ["RetryPolicy"]
