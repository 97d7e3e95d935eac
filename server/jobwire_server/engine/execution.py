"""Where a running job is: in this process's pool or on a remote worker. What acts on running jobs
(cancel requests, lease renewals) goes through here and need not know which."""

from __future__ import annotations

from jobwire_server.engine.executor import Executor
from jobwire_server.engine.remote.executor import RemoteExecutor


class Execution:
    def __init__(self, local: Executor, remote: RemoteExecutor) -> None:
        self.local = local
        self.remote = remote

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Deliver a cancel request (already recorded in the store) to wherever the job runs."""
        return self.local.request_cancel(job_id, reason) or self.remote.request_cancel(job_id, reason)

    def running_ids(self) -> list[str]:
        """Jobs whose leases this process renews."""
        return self.local.running_ids() + self.remote.running_ids()
