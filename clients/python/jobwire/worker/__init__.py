"""The handler API and the remote worker.

A handler module defines kinds of jobs and their phases; the same module runs inside the server
(``jobwire serve --handlers myapp.jobs``) or on a remote worker (``jobwire worker --target HOST:PORT
--handlers myapp.jobs``, or ``Worker(...).run()`` in your own program)::

    from jobwire.worker import JobContext, Kind, PermanentError, RetryableError

    thumbnail = Kind("thumbnail", queue="media", max_attempts=5)

    @thumbnail.phase("fetch")
    async def fetch(ctx: JobContext) -> bytes: ...
"""

from jobwire.worker.errors import PermanentError, RetryableError
from jobwire.worker.kind import JobContext, Kind, MalformedPayload
from jobwire.worker.retry import RetryPolicy
from jobwire.worker.runtime import Backoff, Worker, WorkerRefused

__all__ = ["Backoff", "JobContext", "Kind", "MalformedPayload", "PermanentError", "RetryPolicy", "RetryableError",
           "Worker", "WorkerRefused"]
