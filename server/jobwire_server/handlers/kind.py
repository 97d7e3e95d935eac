"""The handler API lives in the client package (`jobwire.worker`), so one handler module runs in
the server or on a remote worker; the server's modules import it from here."""

from jobwire.worker.kind import NAME_PATTERN, JobContext, Kind, MalformedPayload, PhaseFunction, PhaseSpec

__all__ = ["NAME_PATTERN", "JobContext", "Kind", "MalformedPayload", "PhaseFunction", "PhaseSpec"]
