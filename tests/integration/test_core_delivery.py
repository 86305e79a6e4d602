"""Address-valued signals across real processes (paper §3.1, §3.3).

Each test's children are forked (``procs``: daemonic, always killed and
joined), open the segment by name, so their bindings have their own base
addresses, and report what their handlers got. Timeouts are generous
liveness bounds, never performance claims.
"""

from __future__ import annotations

import os
import random
import signal as os_signal

import helpers_core as h
import pytest

import ombm

pytestmark = pytest.mark.processes


@pytest.fixture
def seg():
    with ombm.create_segment(64 * 200, name=f"core-dlv-{os.getpid()}") as s:
        yield s


def start_receiver(procs, seg, lo=0, size=None, settings=None, read_bytes=0, ack_every=0, method="fork"):
    parent_end, child_end = procs.pipe(method)
    size = seg.size - lo if size is None else size
    start = procs.fork if method == "fork" else procs.spawn
    p = start(h.receive_until_sentinel, child_end, seg.name, lo, size, settings or {}, read_bytes, ack_every)
    return p, parent_end, h.expect(parent_end, "ready")


def finish(region, receivers):
    """Send the sentinel (an explicit signal of the last byte) and collect every receiver's result."""
    ombm.signal(region.address + region.size - 1)
    results = [h.expect(conn, "result") for _, conn, _ in receivers]
    for p, _, _ in receivers:
        assert h.join(p) == 0
    return results


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_gets_addresses_in_its_own_mapping(procs, seg, method):
    region = seg.bind()
    receiver = start_receiver(procs, seg, read_bytes=8, method=method)
    info = receiver[2]
    assert info["pid"] != os.getpid()
    if method == "fork":
        assert info["base"] != region.address  # our mapping is inherited and still occupies its base
    sent = []
    for unit in (0, 3, 17, 199):
        payload = f"unit{unit:04d}".encode()
        region.write(unit * 64, payload + bytes(64 - len(payload)))  # completes the unit: one signal
        sent.append((unit * 64, payload))
    for offset in (300, 1000, 4097):  # outside those units: message data may be overwritten
        region.buffer[offset : offset + 8] = b"explicit"
        ombm.signal(region.address + offset)
        sent.append((offset, b"explicit"))
    [result] = finish(region, [receiver])
    # the child's handler got child_base + offset; it read the message through that very address
    assert [tuple(x) for x in result["got"]] == sent


def test_multicast_reaches_every_watching_process(procs, seg):
    region = seg.bind()
    half = seg.size // 2
    receivers = [start_receiver(procs, seg) for _ in range(3)]
    receivers.append(start_receiver(procs, seg, lo=half))  # watches only the upper half
    before = ombm.stats()
    for unit in range(0, 200, 7):
        region.write(unit * 64, b"m" * 64)
    results = finish(region, receivers)
    everything = [unit * 64 for unit in range(0, 200, 7)]
    for result in results[:3]:
        assert [off for off, _ in result["got"]] == everything
    assert [off for off, _ in results[3]["got"]] == [off for off in everything if off >= half]
    assert ombm.stats()["signals_sent"] - before["signals_sent"] >= 3 * len(everything)
    assert len({info["base"] for _, _, info in receivers}) >= 1


def test_signals_to_one_receiver_arrive_in_fifo_order(procs, seg):
    region = seg.bind()
    receiver = start_receiver(procs, seg)
    order = list(range(100))
    random.Random(7).shuffle(order)
    addresses = [region.address + 13 * i for i in order]
    for address in addresses:
        ombm.signal(address)
    [result] = finish(region, [receiver])
    assert [off for off, _ in result["got"]] == [a - region.address for a in addresses]


def test_concurrent_senders_keep_their_own_order_and_lose_nothing(procs, seg):
    """Several producer processes push into one FIFO at once (the multi-producer ring)."""
    region = seg.bind()
    receiver = ombm.Receiver(capacity=4096)
    try:
        got = []
        receiver.add_handler(region.address, seg.size, lambda a: got.append(a - region.address))
        senders = []
        for k in range(3):
            parent_end, child_end = procs.pipe()
            senders.append((procs.fork(h.send_burst, child_end, seg.name, 1000 * k, 1000), parent_end))
            h.expect(parent_end, "ready")
        for _, conn in senders:
            conn.send("go")
        for p, conn in senders:
            stats = h.expect(conn, "result")
            assert (stats["signals_sent"], stats["signals_dropped"]) == (1000, 0)
            assert h.join(p) == 0
        while receiver.dispatch_pending():
            pass
        assert sorted(got) == list(range(3000))
        for k in range(3):
            assert [off for off in got if off // 1000 == k] == list(range(1000 * k, 1000 * k + 1000))
    finally:
        receiver.close()


def test_a_full_fifo_drops_and_counts_on_the_sender_side(procs, seg):
    region = seg.bind()
    parent_end, child_end = procs.pipe()
    p = procs.fork(h.fill_then_drain, child_end, seg.name, {"fifo_capacity": 16})
    h.expect(parent_end, "ready")
    before = ombm.stats()
    for i in range(50):  # the receiver does not consume meanwhile
        ombm.signal(region.address + i)
    after = ombm.stats()
    assert after["signals_dropped"] - before["signals_dropped"] == 34
    assert after["signals_sent"] - before["signals_sent"] == 16
    parent_end.send("drain")
    result = h.expect(parent_end, "result")
    assert result["got"] == list(range(16))  # exactly the capacity, the oldest ones, in order
    assert result["fifo_drops"] == 34  # the FIFO's own counter agrees (ombm ls shows it)
    assert h.join(p) == 0


def test_writes_that_complete_no_unit_raise_nothing(procs, seg):
    region = seg.bind()
    receiver = start_receiver(procs, seg)
    region.write(0, b"a" * 63)  # stops one byte short
    region.write(64, b"b" * 10)
    region.write(130, b"c" * 60)  # 130..189: unit 128 ends at 191
    region.write(256 + 1, b"d" * 62)  # interior bytes only
    ombm.signal(region.address + 5)  # a marker: anything raised before it would arrive first
    region.write(63, b"A")  # the last byte of unit 0 alone completes it
    region.write(190, b"CC")  # completes unit 128
    [result] = finish(region, [receiver])
    assert [off for off, _ in result["got"]] == [5, 0, 128]


def test_page_units_signal_once_per_page_and_at_the_short_last_page(procs):
    page = ombm.PAGE
    with ombm.create_segment(3 * page + 100, name=f"core-page-{os.getpid()}", unit=ombm.PAGE) as seg:
        assert seg.unit == page
        region = seg.bind()
        receiver = start_receiver(procs, seg)
        region.write(0, b"p" * (page - 1))  # short of the first page's end
        region.write(page - 1, b"p" * (page + 1))  # completes pages 0 and 1
        region.write(2 * page, b"p" * page)  # completes page 2
        region.write(3 * page + 99, b"p")  # the last byte of the segment: the short page 3
        region.write(3 * page, b"p" * 99)  # everything but the last byte of page 3: nothing
        [result] = finish(region, [receiver])
        assert [off for off, _ in result["got"]] == [0, page, 2 * page, 3 * page]


def test_read_only_binding_in_another_process(procs, seg):
    region = seg.bind()
    region.write(0, b"original")
    parent_end, child_end = procs.pipe()
    p = procs.fork(h.try_read_only, child_end, seg.name)
    report = h.expect(parent_end, "result")
    assert h.join(p) == 0
    assert report["readonly_view"] is True
    assert report["assign_is_type_error"], report
    assert report["write"] == "ReadOnlyError" and report["write_is_permission_error"] and report["write_is_ombm_error"]
    assert report["content"] == b"original"
    assert region.read(0, 8) == b"original"


def test_the_mmu_enforces_a_read_only_binding(procs, seg):
    region = seg.bind()
    region.write(0, b"original")
    p = procs.fork(h.poke_read_only, seg.name)
    assert h.join(p) == -os_signal.SIGSEGV
    assert region.read(0, 8) == b"original"


def test_software_only_kernel_path_delivers_in_order(procs, seg):
    """configure(signal_path="kernel"): every signal is a system call into the receiver's kernel queue."""
    region = seg.bind()
    window = 8  # the kernel queue is short (net.unix.max_dgram_qlen): send a window, wait for its ack
    receiver = start_receiver(procs, seg, settings={"signal_path": "kernel"}, ack_every=window)
    before = ombm.stats()
    sent = 0
    while sent < 96:
        for _ in range(window):
            ombm.signal(region.address + sent)
            sent += 1
        assert h.expect(receiver[1], "ack") == sent
    after = ombm.stats()
    [result] = finish(region, [receiver])
    assert [off for off, _ in result["got"]] == list(range(96))
    assert after["kernel_signals"] - before["kernel_signals"] == 96
    assert after["signals_dropped"] == before["signals_dropped"]


def test_software_only_path_counts_what_an_overflowing_burst_loses(procs, seg):
    region = seg.bind()
    parent_end, child_end = procs.pipe()
    p = procs.fork(h.fill_then_drain, child_end, seg.name, {"signal_path": "kernel"})
    h.expect(parent_end, "ready")
    before = ombm.stats()
    for i in range(300):  # far more than the kernel queue holds, the receiver not reading
        ombm.signal(region.address + i)
    after = ombm.stats()
    delivered = after["kernel_signals"] - before["kernel_signals"]
    dropped = after["signals_dropped"] - before["signals_dropped"]
    assert delivered + dropped == 300
    assert delivered >= 1 and dropped >= 1
    parent_end.send("drain")
    result = h.expect(parent_end, "result")
    assert result["got"] == list(range(delivered))
    assert result["fifo_drops"] == dropped
    assert h.join(p) == 0


def test_a_forked_child_inherits_mappings_but_not_ownership(procs, seg, own_receiver):
    region = seg.bind()
    got = []
    handle = ombm.signal_handler(region.address, seg.size, lambda a: got.append(a - region.address))
    parent_end, child_end = procs.pipe()
    p = procs.fork(h.receive_until_sentinel, child_end, seg.name, 0, seg.size, {}, 0, 0)
    h.expect(parent_end, "ready")
    region.write(0, b"x" * 64)
    ombm.signal(region.address + seg.size - 1)
    h.expect(parent_end, "result")
    assert h.join(p) == 0
    # the child's exit released only what it owned: our segment and our receiver still work
    assert os.path.exists(seg.path) and os.path.exists(handle.receiver.fifo.path)
    region.write(64, b"y" * 64)
    while ombm.sig_wait(0.5) > 0.0:
        pass
    assert got == [0, seg.size - 1, 64]
