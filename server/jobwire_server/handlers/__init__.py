"""Handler API: define kinds of jobs and their phases. It lives in the client package
(`jobwire.worker`), so a handler module runs in the server or on a remote worker alike; existing
modules keep importing it from here.

    from jobwire_server.handlers import Kind, JobContext, PermanentError, RetryableError
"""

from jobwire.worker import JobContext, Kind, MalformedPayload, PermanentError, RetryableError, RetryPolicy

__all__ = ["JobContext", "Kind", "MalformedPayload", "PermanentError", "RetryPolicy", "RetryableError"]
