"""Handler API: define kinds of jobs and their phases.

    from jobwire_server.handlers import Kind, JobContext, PermanentError, RetryableError
"""

from jobwire_server.domain.outcomes import PermanentError, RetryableError
from jobwire_server.domain.retry import RetryPolicy
from jobwire_server.handlers.kind import JobContext, Kind, MalformedPayload

__all__ = ["JobContext", "Kind", "MalformedPayload", "PermanentError", "RetryPolicy", "RetryableError"]
