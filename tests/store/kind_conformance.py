"""What every store must do with the kinds remote workers declare, and with claims split between
this process's slots and remote workers' room: mixed into each backend's test class beside
`StoreConformance` (same fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobwire_server.domain.errors import KindMismatch
from jobwire_server.domain.kinds import KindSpec
from jobwire_server.store.base import ClaimParams, DeclareKinds, InsertJobs, RemoteRoom

from tests.store.conformance import LEASE, OWNER, REQUEST_TTL, T0, insert, nj

Store = Any


def spec(name: str = "remote.kind", phases: tuple[str, ...] = ("fetch", "resize"), *, queue: str = "default",
         max_attempts: int = 3) -> KindSpec:
    return KindSpec(name=name, phases=phases, queue=queue, max_attempts=max_attempts, timeout=2.5,
                    retry_base_delay=0.5, retry_max_delay=9.0)


async def declare(store: Store, *specs: KindSpec, now: float = T0) -> Any:
    (result,) = await store.write([DeclareKinds(list(specs), now)])
    return result


async def claim_split(store: Store, *, limit: int, remote_kinds: frozenset[str],
                      remote: tuple[RemoteRoom, ...] = ()) -> list[str]:
    params = ClaimParams(now=T0, limit=limit, owner=OWNER, lease_expires=T0 + LEASE, remote_kinds=remote_kinds,
                         remote=remote)
    _, claimed = await store.claim_jobs(params)
    return [c.job.kind + ":" + c.job.queue for c in claimed]


class KindConformance:
    async def test_declared_kinds_are_listed_with_every_field(self, store: Store) -> None:
        assert await store.list_kinds() == []
        declared = [spec("b.kind"), spec("a.kind", ("one",), queue="media", max_attempts=7)]
        assert await declare(store, *declared) == declared
        assert await store.list_kinds() == sorted(declared, key=lambda k: k.name)

    async def test_a_known_kind_keeps_its_phases_and_takes_new_defaults(self, store: Store) -> None:
        await declare(store, spec())
        assert await declare(store, spec(queue="other", max_attempts=9)) == [spec(queue="other", max_attempts=9)]
        assert await store.list_kinds() == [spec(queue="other", max_attempts=9)]

    async def test_other_phases_are_refused_and_nothing_of_that_declaration_is_written(self, store: Store) -> None:
        await declare(store, spec())
        refused = await declare(store, spec("new.kind"), spec(phases=("fetch",)))
        assert isinstance(refused, KindMismatch)
        assert (refused.kind, refused.known, refused.declared) == ("remote.kind", ("fetch", "resize"), ("fetch",))
        assert [k.name for k in await store.list_kinds()] == ["remote.kind"]

    async def test_a_refused_declaration_does_not_fail_the_rest_of_its_batch(self, store: Store) -> None:
        await declare(store, spec())
        results = await store.write([DeclareKinds([spec(phases=("x",))], T0),
                                     InsertJobs([nj("remote.kind")], T0, REQUEST_TTL)])
        assert isinstance(results[0], KindMismatch)
        assert len(results[1]) == 1 and results[1][0].created

    async def test_kinds_survive_close_and_reopen(self, store: Store, reopen: Callable[[], Store]) -> None:
        await declare(store, spec())
        await store.close()
        again = reopen()
        await again.open()
        try:
            assert await again.list_kinds() == [spec()]
        finally:
            await again.close()

    async def test_this_process_never_claims_remote_kinds(self, store: Store) -> None:
        await insert(store, nj("remote.kind"), nj("local.kind"), nj("remote.kind", queue="media"))
        claimed = await claim_split(store, limit=10, remote_kinds=frozenset({"remote.kind"}))
        assert claimed == ["local.kind:default"]

    async def test_remote_room_claims_only_its_kinds_and_queues_up_to_its_room(self, store: Store) -> None:
        await insert(store, *(nj("remote.kind") for _ in range(3)), nj("remote.kind", queue="media"),
                     nj("other.kind"), nj("local.kind"))
        remote = frozenset({"remote.kind", "other.kind"})
        claimed = await claim_split(store, limit=0, remote_kinds=remote,
                                    remote=(RemoteRoom(("remote.kind",), ("default",), 2),))
        assert claimed == ["remote.kind:default", "remote.kind:default"]
        claimed = await claim_split(store, limit=0, remote_kinds=remote,
                                    remote=(RemoteRoom(("remote.kind", "other.kind"), (), 5),))
        assert sorted(claimed) == ["other.kind:default", "remote.kind:default", "remote.kind:media"]

    async def test_two_groups_that_could_take_the_same_job_claim_it_once(self, store: Store) -> None:
        await insert(store, nj("remote.kind"), nj("remote.kind"))
        groups = (RemoteRoom(("remote.kind",), (), 2), RemoteRoom(("remote.kind",), ("default",), 2))
        claimed = await claim_split(store, limit=0, remote_kinds=frozenset({"remote.kind"}), remote=groups)
        assert claimed == ["remote.kind:default", "remote.kind:default"]

    async def test_local_and_remote_claims_share_one_transaction(self, store: Store) -> None:
        await insert(store, nj("remote.kind"), nj("local.kind"), nj("local.kind"))
        claimed = await claim_split(store, limit=1, remote_kinds=frozenset({"remote.kind"}),
                                    remote=(RemoteRoom(("remote.kind",), (), 4),))
        assert sorted(claimed) == ["local.kind:default", "remote.kind:default"]

