"""Segments and regions in one process (ombm.core.segment): creation, binding, reading, releasing."""

from __future__ import annotations

import os
import stat

import pytest

import ombm
from ombm.core import admin as ombm_inspect
from ombm.core import namespace


@pytest.fixture
def seg():
    with ombm.create_segment(3000) as s:
        yield s


def test_create_segment_records_what_was_asked():
    with ombm.create_segment(1000, unit=128) as s:
        assert (s.size, s.unit, s.mode, s.signal_on_write) == (1000, 128, ombm.MESSAGE_CONSISTENCY, True)
        assert s.name.startswith("anon-")
    with ombm.create_segment(10, mode=ombm.CONVENTIONAL) as s:
        assert s.mode == ombm.CONVENTIONAL and s.signal_on_write is False
    with ombm.create_segment(10, signal_on_write=False) as s:
        assert s.mode == ombm.MESSAGE_CONSISTENCY and s.signal_on_write is False


def test_units_are_bytes():
    assert ombm.CACHE_LINE == 64
    assert ombm.PAGE == os.sysconf("SC_PAGE_SIZE")


def test_objects_live_in_a_private_per_user_folder(seg):
    folder = os.path.dirname(seg.path)
    assert folder == os.path.join(os.environ.get("OMBM_SHM_DIR", "/dev/shm"), f"ombm-{os.getuid()}")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(seg.path).st_mode) == 0o600
    assert "ombm" in seg.path


def test_named_segment_is_found_by_name_and_shares_bytes():
    with ombm.create_segment(4096, name=f"core-named-{os.getpid()}") as s, s.bind() as mine:
        with ombm.open_segment(s.name) as other, other.bind() as theirs:
            assert (other.size, other.unit, other.mode, other.id) == (s.size, s.unit, s.mode, s.id)
            mine.write(100, b"hello")
            assert theirs.read(100, 5) == b"hello"
            assert bytes(theirs.buffer[100:105]) == b"hello"


def test_each_bind_is_its_own_mapping_of_the_same_bytes(seg):
    a, b = seg.bind(), seg.bind()
    assert a.address != b.address
    assert a.size == b.size == seg.size == len(a.buffer)
    a.buffer[0:3] = b"abc"
    assert b.read(0, 3) == b"abc"
    assert a.offset_of(a.address + 7) == b.offset_of(b.address + 7) == 7


def test_read_only_binding_refuses_writes_and_keeps_content(seg):
    rw = seg.bind()
    rw.write(0, b"original")
    ro = seg.bind(writable=False)
    assert ro.buffer.readonly and not ro.writable
    with pytest.raises(TypeError):
        ro.buffer[0] = 0
    with pytest.raises(ombm.ReadOnlyError) as info:
        ro.write(0, b"changed!")
    assert isinstance(info.value, PermissionError) and isinstance(info.value, ombm.OmbmError)
    assert ro.read(0, 8) == rw.read(0, 8) == b"original"


def test_release_removes_the_name_and_is_idempotent():
    s = ombm.create_segment(64)
    region = s.bind()
    assert os.path.exists(s.path)
    s.release()
    s.release()
    assert s.released and region.closed
    assert not os.path.exists(s.path)
    with pytest.raises(ombm.SegmentNotFoundError):
        ombm.open_segment(s.name)


def test_unbind_is_idempotent_and_closes_the_region(seg):
    region = seg.bind()
    region.unbind()
    region.unbind()
    assert region.closed
    with pytest.raises(ombm.ClosedError):
        region.write(0, b"x")
    with pytest.raises(ombm.ClosedError):
        region.read(0, 1)
    with pytest.raises(ombm.AddressError):
        ombm.core.segment.find_region(region.address)


def test_bind_after_release_is_a_closed_error():
    s = ombm.create_segment(64)
    s.release()
    with pytest.raises(ombm.ClosedError):
        s.bind()


def test_creator_release_removes_the_name_while_an_opener_keeps_its_mapping():
    creator = ombm.create_segment(256, name=f"core-creator-{os.getpid()}")
    opener = ombm.open_segment(creator.name)
    region = opener.bind()
    creator.release()
    assert not os.path.exists(creator.path)
    region.write(0, b"still mapped")
    assert region.read(0, 12) == b"still mapped"
    opener.release()


def test_opener_release_leaves_the_creators_segment():
    with ombm.create_segment(256, name=f"core-opener-{os.getpid()}") as creator:
        ombm.open_segment(creator.name).release()
        assert os.path.exists(creator.path)
        with ombm.open_segment(creator.name) as again:
            assert again.size == 256


def test_region_read_and_write_round_trip_any_buffer(seg):
    region = seg.bind()
    region.write(10, bytearray(b"ab"))
    region.write(12, memoryview(b"cd"))
    region.write(14, memoryview(bytes(range(4))).cast("B", (2, 2)))
    assert region.read(10, 8) == b"abcd\x00\x01\x02\x03"
    region.write(seg.size - 1, b"z")
    assert region.read(seg.size - 1, 1) == b"z"
    region.write(seg.size, b"")  # empty write at the very end is in bounds
    assert region.read(0, 0) == b""


def test_find_region_maps_addresses_to_their_binding(seg):
    a, b = seg.bind(), seg.bind()
    for region in (a, b):
        assert ombm.core.segment.find_region(region.address) is region
        assert ombm.core.segment.find_region(region.address + seg.size - 1) is region


def test_list_segments_describes_holders_and_receivers(seg, own_receiver):
    region = seg.bind()
    handle = ombm.signal_handler(region.address + 64, 128, lambda a: None)
    info = {i.name: i for i in ombm_inspect.list_segments()}[seg.name]
    assert (info.size, info.mode, info.unit, info.signal_on_write) == (3000, "message", 64, True)
    assert info.holders == 1
    [receiver] = info.receivers
    assert (receiver.pid, receiver.alive, receiver.offset, receiver.size) == (os.getpid(), True, 64, 128)
    assert receiver.token == handle.receiver.fifo.token
    handle.disable()
    info = {i.name: i for i in ombm_inspect.list_segments()}[seg.name]
    assert info.receivers == ()


def test_gc_leaves_live_objects_alone(seg, own_receiver):
    region = seg.bind()
    handle = ombm.signal_handler(region.address, 64, lambda a: None)
    ombm_inspect.gc()
    assert os.path.exists(seg.path) and os.path.exists(handle.receiver.fifo.path)
    assert any(e.token == handle.receiver.fifo.token for e in seg.directory.entries())


def test_names_are_validated_to_safe_file_names():
    assert namespace.validate_name("a" * 200) == "a" * 200
    assert namespace.validate_name("x-1_2.3") == "x-1_2.3"


def test_the_native_write_path_does_what_the_python_one_does(own_receiver):
    """Region.write is native (``_native.Writer``) on writable bindings; the class method is its
    slow path. Both must leave the same bytes and raise the same signals, for any buffer."""
    import array

    from ombm.core.signals import current_receiver

    got = []
    with ombm.create_segment(4096, unit=256) as seg:
        fast, slow = seg.bind(), seg.bind()
        assert type(fast.write).__name__ == "builtin_function_or_method"  # the native one
        ombm.signal_handler(fast.address, fast.size, lambda address: got.append(address - fast.address))
        writes = [(250, b"abcdef"), (0, bytearray(b"x" * 256)), (300, memoryview(b"y" * 800)),
                  (3000, array.array("i", range(274))), (4000, memoryview(bytes(range(96))).cast("B", (8, 12))),
                  (17, b""), (511, b"z")]
        for path in (fast.write, ombm.Region.write.__get__(slow)):
            fast.buffer[:] = bytes(seg.size)  # a plain store: no signal
            got.clear()
            for offset, data in writes:
                path(offset, data)
            current_receiver().dispatch_pending()
            snapshot = (bytes(seg.bind(writable=False).buffer), sorted(got))
            if path is fast.write:
                first = snapshot
        assert snapshot == first
        # each unit whose last byte a write wrote, once per such write
        assert first[1] == [0, 0, 256, 256, 512, 768, 2816, 3072, 3328, 3584, 3840, 3840]
