"""The impairment relay (``tests/net/impair.py``): its pure directions, then the relay process
between two hosts with a UDP echo behind it, each impairment alone and all of them both ways.
What the client receives agrees with what the relay says it did: duplicates arrive twice,
corrupted datagrams differ, reordering shows in the sequence numbers, delay adds at least the
delay (a lower bound: the only kind of bound on time a test may assert)."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from .impair import Direction, Impairment, ImpairmentRelay
from .netns import Host, Network, receive, udp_socket

COUNT = 1000
_SEQ = struct.Struct("<I")


def datagram(seq: int) -> bytes:
    return _SEQ.pack(seq) + bytes((seq + i) % 256 for i in range(28))


def seq_of(data: bytes) -> int:
    return int(_SEQ.unpack_from(data)[0])


def late(sequence: list[int]) -> int:
    """How many arrive after a datagram with a higher sequence number."""
    highest, count = -1, 0
    for seq in sequence:
        count += seq < highest
        highest = max(highest, seq)
    return count


# --- the pure direction -------------------------------------------------------------------------


def _run(impairment: Impairment, count: int = 2000, seed: int = 7) -> tuple[list[bytes], Counter[str]]:
    direction = Direction(impairment, random.Random(seed))
    out: list[bytes] = []
    for seq in range(count):
        out += direction.push(datagram(seq), now=seq * 1e-5)
        out += direction.poll(now=seq * 1e-5)
    out += direction.flush()
    return out, direction.counts


def test_a_direction_without_impairment_passes_everything_in_order() -> None:
    out, counts = _run(Impairment())
    assert out == [datagram(seq) for seq in range(2000)]
    assert counts == Counter(received=2000)


def test_a_direction_accounts_for_every_datagram() -> None:
    everything = Impairment(drop=0.1, corrupt=0.1, duplicate=0.1, reorder=0.1, reorder_after=3,
                            delay_us=5, jitter_us=20)
    out, counts = _run(everything)
    assert len(out) == counts["received"] - counts["dropped"] + counts["duplicated"]
    assert counts["corrupted"] == sum(counts[f"corrupted_{k}"] for k in ("flip", "truncate", "extend"))
    assert all(counts[k] > 0 for k in ("dropped", "corrupted", "duplicated", "held", "reordered", "delayed"))
    assert _run(everything) == (out, counts), "seeded: the same decisions every time"


def test_a_held_datagram_is_overtaken_by_exactly_reorder_after_others() -> None:
    out, counts = _run(Impairment(reorder=0.05, reorder_after=3, hold_max_us=1e9))
    sequence = [seq_of(d) for d in out]
    assert sorted(sequence) == list(range(2000))
    assert late(sequence) == counts["reordered"] > 0
    for position, seq in enumerate(sequence):
        overtaken_by = [s for s in sequence[:position] if s > seq]
        assert len(overtaken_by) in (0, 3) or seq > 1950, "only the flush at the end releases one early"


def test_corruption_always_changes_the_datagram() -> None:
    out, counts = _run(Impairment(corrupt=1.0), count=600)
    assert not set(out) & {datagram(seq) for seq in range(600)}
    assert all(counts[f"corrupted_{k}"] > 100 for k in ("flip", "truncate", "extend"))
    empty = Direction(Impairment(corrupt=1.0), random.Random(1))
    assert all(len(empty.push(b"", 0.0)[0]) > 0 for _ in range(50)), "an empty datagram can only grow"


def test_a_delayed_datagram_waits_for_its_time() -> None:
    direction = Direction(Impairment(delay_us=1000), random.Random(0))
    assert direction.push(b"x", now=5.0) == []
    assert direction.next_deadline() == pytest.approx(5.001)
    assert direction.poll(now=5.0009) == []
    assert direction.poll(now=5.001) == [b"x"]


def test_a_bad_impairment_is_refused() -> None:
    with pytest.raises(ValueError):
        Impairment(drop=1.5)
    with pytest.raises(ValueError, match="unknown"):
        Impairment.parse("loss=0.1")
    assert Impairment.parse(Impairment(drop=0.25, reorder_after=4).spec()) == Impairment(drop=0.25, reorder_after=4)


# --- the relay process between two hosts --------------------------------------------------------


@contextmanager
def echo(host: Host) -> Iterator[int]:
    """A UDP echo inside ``host`` (a thread of this process); yields its port."""
    sock = udp_socket(host, timeout_s=0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(65535)
            except TimeoutError:
                continue
            sock.sendto(data, source)

    thread = threading.Thread(target=serve, name="udp-echo", daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(10)
        sock.close()


def _wait_until(condition: Callable[[], bool], deadline_s: float = 60.0) -> None:
    """Poll ``condition``; the deadline bounds a failure only."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "the relay never caught up"
        time.sleep(0.005)


def exchange(hosts: Network, a_to_b: Impairment = Impairment(), b_to_a: Impairment = Impairment(),
             count: int = COUNT) -> tuple[list[bytes], dict[str, Counter[str]]]:
    """``count`` datagrams from a client in host a, through a relay in a, to an echo in b, and
    back; what the client received and the relay's final counts."""
    a, b = hosts
    with echo(b) as port, udp_socket(a) as client, ImpairmentRelay(
        a, (b.address, port), a_to_b=a_to_b, b_to_a=b_to_a, seed=12
    ) as relay:
        for seq in range(count):
            client.sendto(datagram(seq), ("127.0.0.1", relay.port_a))
        _wait_until(lambda: relay.counts()["a_to_b"]["received"] == count)
        relay.flush()

        def echoed() -> bool:
            counts = relay.counts()
            return counts["b_to_a"]["received"] == counts["a_to_b"]["sent"]

        _wait_until(echoed)
        counts = relay.stop()
        got = receive(client, counts["b_to_a"]["sent"])
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(65535)
    for direction in counts.values():
        assert direction["sent"] == direction["received"] - direction["dropped"] + direction["duplicated"]
        assert direction["send_errors"] == 0
    return got, counts


def test_duplicates_arrive_twice(hosts: Network) -> None:
    got, counts = exchange(hosts, a_to_b=Impairment(duplicate=0.2))
    duplicated = counts["a_to_b"]["duplicated"]
    assert duplicated > 0 and len(got) == COUNT + duplicated
    times_seen = Counter(got)
    assert set(times_seen) == {datagram(seq) for seq in range(COUNT)}
    assert sorted(Counter(times_seen.values()).items()) == [(1, COUNT - duplicated), (2, duplicated)]


def test_drops_both_ways_are_the_missing_sequence_numbers(hosts: Network) -> None:
    got, counts = exchange(hosts, a_to_b=Impairment(drop=0.1), b_to_a=Impairment(drop=0.1))
    dropped = counts["a_to_b"]["dropped"] + counts["b_to_a"]["dropped"]
    assert counts["a_to_b"]["dropped"] > 0 and counts["b_to_a"]["dropped"] > 0
    assert len(set(got)) == len(got) == COUNT - dropped
    assert set(got) <= {datagram(seq) for seq in range(COUNT)}


def test_corrupted_datagrams_differ(hosts: Network) -> None:
    got, counts = exchange(hosts, a_to_b=Impairment(corrupt=0.2))
    intact = {datagram(seq) for seq in range(COUNT)}
    assert len(got) == COUNT
    assert sum(d not in intact for d in got) == counts["a_to_b"]["corrupted"] > 0
    assert all(counts["a_to_b"][f"corrupted_{k}"] > 0 for k in ("flip", "truncate", "extend"))


def test_reordering_shows_in_the_sequence_numbers(hosts: Network) -> None:
    got, counts = exchange(hosts, a_to_b=Impairment(reorder=0.1, reorder_after=3))
    sequence = [seq_of(d) for d in got]
    assert sorted(sequence) == list(range(COUNT))
    assert late(sequence) == counts["a_to_b"]["reordered"] > 0


def test_every_impairment_both_ways_is_accounted_for(hosts: Network) -> None:
    everything = Impairment(drop=0.05, corrupt=0.05, duplicate=0.05, reorder=0.05, reorder_after=2,
                            delay_us=50, jitter_us=200)
    got, counts = exchange(hosts, a_to_b=everything, b_to_a=everything)
    assert counts["b_to_a"]["received"] == counts["a_to_b"]["sent"]
    assert len(got) == counts["b_to_a"]["sent"]
    for direction in counts.values():
        assert all(direction[k] > 0 for k in ("dropped", "corrupted", "duplicated", "reordered", "delayed"))


def test_delay_adds_at_least_the_delay_to_every_round_trip(hosts: Network) -> None:
    a, b = hosts
    delay_us = 2000
    with echo(b) as port, udp_socket(a) as client, ImpairmentRelay(
        a, (b.address, port), a_to_b=Impairment(delay_us=delay_us)
    ) as relay:
        for seq in range(20):
            start = time.perf_counter()
            client.sendto(datagram(seq), ("127.0.0.1", relay.port_a))
            assert client.recv(65535) == datagram(seq)
            assert time.perf_counter() - start >= delay_us / 1e6
        assert relay.stop()["a_to_b"]["delayed"] == 20


def test_the_relay_learns_a_clients_address_and_can_be_given_one(hosts: Network) -> None:
    a, b = hosts
    with echo(b) as port, udp_socket(a) as client:
        fixed = ("127.0.0.1", client.getsockname()[1])
        with ImpairmentRelay(a, (b.address, port), a=fixed) as relay:
            with udp_socket(a) as stranger:  # its datagram is forwarded, the echo goes to A
                stranger.sendto(b"hello", ("127.0.0.1", relay.port_a))
                assert client.recv(64) == b"hello"
            assert relay.stop()["b_to_a"]["sent"] == 1
