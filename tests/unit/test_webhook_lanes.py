"""The fair scheduler of webhook attempts: lanes per destination, round-robin, caps, bounded holding."""

from __future__ import annotations

import itertools

import pytest
from jobwire_server.domain.deliveries import Delivery
from jobwire_server.engine.webhooks.lanes import Lanes, destination

_ids = itertools.count()


def delivery(url: str) -> Delivery:
    return Delivery(f"d{next(_ids)}", "job", 1, "job.succeeded", url, b"{}", 0, 0.0)


@pytest.mark.parametrize(("url", "lane"), [
    ("http://Example.com/a", "example.com:80"), ("https://example.com./b?x", "example.com:443"),
    ("http://127.0.0.1:8080/", "127.0.0.1:8080"), ("http://[::1]:9/", "::1:9"), ("http://h:bad/", "http://h:bad/"),
])
def test_destination_is_host_and_port(url: str, lane: str) -> None:
    assert destination(url) == lane


def test_a_stuck_destination_keeps_only_its_own_slots() -> None:
    lanes = Lanes(total=6, per_destination=2)
    for _ in range(20):
        lanes.hold(delivery("http://hang.example/"))
    started = [lanes.next_ready() for _ in range(3)]
    assert [d.url if d else None for d in started] == ["http://hang.example/"] * 2 + [None]
    assert lanes.room() == 4  # four slots are still free for other destinations
    healthy = [delivery(f"http://ok{i}.example/") for i in range(4)]
    for item in healthy:
        lanes.hold(item)
    assert {lanes.next_ready() for _ in range(4)} == set(healthy)
    assert lanes.next_ready() is None and lanes.room() == 0


def test_lanes_take_turns() -> None:
    lanes = Lanes(total=1, per_destination=1)
    a = [delivery("http://a/") for _ in range(3)]
    b = [delivery("http://b/") for _ in range(3)]
    for item in a + b:
        lanes.hold(item)
    order = []
    while (ready := lanes.next_ready()) is not None:
        order.append(ready.url)
        lanes.finished(ready)
    assert order == ["http://a/", "http://b/"] * 3


def test_a_delivery_taken_again_is_held_once() -> None:
    lanes = Lanes(total=4, per_destination=4)
    item = delivery("http://a/")
    assert lanes.hold(item) and not lanes.hold(item)
    assert lanes.held == 1 and lanes.next_ready() is item and lanes.next_ready() is None
    lanes.finished(item)
    assert lanes.held == 0 and lanes.in_flight == 0


def test_holding_is_bounded() -> None:
    lanes = Lanes(total=2, per_destination=1, held_limit=5)
    for _ in range(5):
        lanes.hold(delivery("http://stuck/"))
    assert lanes.room() == 0
    first = lanes.next_ready()
    assert first is not None
    lanes.finished(first)
    assert lanes.room() == 1
