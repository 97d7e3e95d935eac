"""Remote workers: sessions over `WorkerService.Connect` and the executor that runs phases on them
with the in-process executor's semantics (server-driven phases, `decide()`, fencing, leases)."""
