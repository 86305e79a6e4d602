"""Zero-copy numpy arrays over a Stream: views of the segment, release, and no silent change."""

from __future__ import annotations

import gc
import os

import pytest

np = pytest.importorskip("numpy")

import ombm
from ombm.channels.arrays import ArrayView  # noqa: E402
from ombm.channels.stream import Stream  # noqa: E402


@pytest.fixture
def name(request):
    return f"charr-{os.getpid()}-{request.node.name[:40].replace('[', '-').replace(']', '')}"


@pytest.fixture
def pair(name, own_receiver):
    w = Stream.create(name, slot_bytes=4096, slots=2)
    r = Stream.open(name)
    yield w, r
    r.close()
    w.close(flush_timeout=0)


def test_a_small_array_arrives_as_a_read_only_view_of_the_segment(pair):
    w, r = pair
    a = np.arange(24, dtype=np.float32).reshape(4, 6)
    w.send_array(a)
    with r.recv_array(1) as view:
        assert isinstance(view, ArrayView) and view.zero_copy
        got = view.array
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
        assert not got.flags.writeable
        with pytest.raises(ValueError):
            got[0, 0] = 1
        base = r.region.address
        assert base <= got.ctypes.data < base + r.region.size  # it is the segment's memory
        assert got.ctypes.data % 64 == 0  # aligned
        del got
    with pytest.raises(ombm.ClosedError):
        view.array


def test_the_writer_cannot_reuse_a_slot_whose_array_is_still_alive(pair):
    w, r = pair  # 2 slots, used round-robin
    w.send_array(np.full(100, 7, dtype=np.int64))
    w.send_array(np.full(100, 8, dtype=np.int64))
    first, second = r.recv_array(1), r.recv_array(1)
    kept = first.array  # kept past release: must never change under us
    first.release()
    second.release()
    with pytest.raises(ombm.WouldBlock):
        w.send_array_nowait(np.full(100, 9, dtype=np.int64))  # its slot is the first: pinned by `kept`
    assert (kept == 7).all()
    view_of_view = kept[10:20]
    del kept
    gc.collect()
    with pytest.raises(ombm.WouldBlock):
        w.send_array_nowait(np.full(100, 9, dtype=np.int64))  # a view of it pins it too
    assert (view_of_view == 7).all()
    del view_of_view  # the last reference: the slot goes back
    w.send_array_nowait(np.full(100, 9, dtype=np.int64))
    w.send_array_nowait(np.full(100, 10, dtype=np.int64))
    assert (r.recv_array(1).array == 9).all()


def test_copy_true_gives_an_owned_array_and_frees_the_slot(pair):
    w, r = pair
    for i in range(5):  # more than the two slots: each copy frees its slot at once
        w.send_array(np.full((3, 3), i, dtype=np.uint16), timeout=1)
        got = r.recv_array(1, copy=True)
        assert isinstance(got, np.ndarray) and got.flags.writeable and (got == i).all()


@pytest.mark.parametrize("array", [
    np.zeros(()),  # 0-d
    np.zeros((0, 5), dtype=np.int8),  # empty
    np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian
    np.arange(20, dtype=np.float64).reshape(4, 5).T,  # Fortran order
    np.arange(40, dtype=np.int16)[::3],  # strided
    np.array([(1, 2.5, b"ab"), (3, 4.5, b"cd")], dtype=[("i", "<i4"), ("f", "<f8", (1,)), ("s", "S2")]),
    np.array(["héllo", "wörld"]),  # unicode
    np.array([0, 1, 2], dtype="datetime64[ns]"),
    np.ones(5, dtype=np.complex128),
    np.ones(10, dtype=bool),
])
def test_dtypes_and_layouts_round_trip(pair, array):
    w, r = pair
    w.send_array(array)
    with r.recv_array(1) as view:
        got = view.array
        assert got.dtype == array.dtype and got.shape == array.shape
        assert np.array_equal(got, array)
        del got


def test_an_array_larger_than_a_slot_arrives_as_a_copy(pair):
    import threading

    w, r = pair
    big = np.random.default_rng(1).random((50, 100))  # 40000 bytes, 4 KiB slots, 2 of them
    got = []
    t = threading.Thread(target=lambda: got.append(r.recv_array(10)))
    t.start()
    w.send_array(big, timeout=10)
    t.join(10)
    view = got[0]
    assert not view.zero_copy and np.array_equal(view.array, big)
    assert not view.array.flags.writeable
    view.release()


def test_object_arrays_are_refused_and_nothing_is_sent(pair):
    w, r = pair
    with pytest.raises(TypeError, match="object"):
        w.send_array(np.array([object(), 1], dtype=object))
    with pytest.raises(TypeError, match="object"):
        w.send_array(np.zeros(2, dtype=[("a", "O")]))
    with pytest.raises(TypeError, match="ndarray"):
        w.send_array([1, 2, 3])
    w.send(b"next")
    assert r.recv(1) == b"next"


def test_kinds_do_not_mix_silently(pair):
    w, r = pair
    w.send(b"bytes first")
    with pytest.raises(TypeError, match="bytes"):
        r.recv_array(1)
    assert r.recv(1) == b"bytes first"  # still there
    w.send_array(np.arange(3))
    view = r.recv(1)  # recv takes whatever comes: an array arrives as an ArrayView
    assert isinstance(view, ArrayView) and view.array.tolist() == [0, 1, 2]
    view.release()


def test_np_asarray_and_repr(pair):
    w, r = pair
    w.send_array(np.arange(4, dtype=np.int32))
    view = r.recv_array(1)
    assert np.asarray(view).tolist() == [0, 1, 2, 3]
    assert "zero-copy" in repr(view)
    view.release()
    assert "released" in repr(view)


def test_a_kept_array_outlives_the_stream_safely(name, own_receiver):
    w = Stream.create(name, slot_bytes=4096, slots=2)
    r = Stream.open(name)
    w.send_array(np.arange(10))
    kept = r.recv_array(1).array
    r.close()
    w.close()
    assert kept.tolist() == list(range(10))  # the mapping lives as long as the array


@pytest.mark.parametrize("header", [
    {"d": "|O", "s": [2]},                    # object dtype
    {"d": "<f8", "s": [2 ** 62, 4]},          # a shape whose size overflows int64
    {"d": "<f8", "s": [-1]},                  # negative dimension
    {"d": "<f8", "s": [1000]},                # more data than the payload holds
    {"d": "not a dtype", "s": [1]},
    {"d": [["a", "<i4", [1, 2, 3, 4]]], "s": [1]},
    [1, 2, 3],                                # not a map
])
def test_hostile_array_headers_are_frame_errors(header):
    import msgpack

    from ombm.channels.arrays import unpack_trailer

    packed = msgpack.packb(header)
    payload = bytes(64) + packed + len(packed).to_bytes(4, "little")
    with pytest.raises(ombm.FrameError):
        unpack_trailer(payload)
