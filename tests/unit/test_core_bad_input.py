"""Bad input to the core runtime: the documented exception, and nothing changed.

DESIGN.md §4: bad arguments raise ValueError/TypeError before anything is
changed; every ombm error derives from OmbmError and the fitting builtin; a
segment's header is hostile input (SegmentFormatError ⊂ ValueError).
"""

from __future__ import annotations

import inspect as pyinspect
import os
import struct
import threading

import pytest

import ombm
import ombm.core.admin
from ombm import _layout as L
from ombm import errors
from ombm.core import namespace
from ombm.core.fifo import Fifo
from ombm.core.segment import find_region

from conftest import objects_of

FOLDER = namespace.folder()


def my_objects() -> set[str]:
    """Files of the per-user folder whose header names this process as owner."""
    return objects_of(os.getpid(), FOLDER)


def raised_by(fn, *args) -> BaseException | None:
    """The exception ``fn(*args)`` raised (its traceback dropped, so it pins no frame)."""
    try:
        fn(*args)
    except Exception as e:
        return e.with_traceback(None)
    return None


def open_fds() -> set[tuple[str, str]]:
    """This process's open file descriptors and what they point at. Compare with ``<=``: a
    descriptor that earlier tests left to the garbage collector may close meanwhile, but a
    rejected call must open none."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:  # the one listdir used, closed already
            pass
    return fds


def in_fresh_thread(fn):
    """Run ``fn`` in a new thread (which has no receiver yet); return what it raised."""
    out = {}

    def run():
        try:
            fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    return out.get("error")


@pytest.fixture
def region():
    with ombm.create_segment(1000) as seg:
        r = seg.bind()
        r.write(0, bytes(range(256)) * 3 + bytes(232))
        yield r


# ---- the exception tree
def test_every_ombm_error_derives_from_ombm_error_and_a_builtin():
    classes = [c for _, c in pyinspect.getmembers(errors, pyinspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 12
    for cls in classes:
        assert issubclass(cls, ombm.OmbmError), cls
    for cls, builtin in [
        (ombm.SegmentNotFoundError, FileNotFoundError),
        (ombm.SegmentExistsError, FileExistsError),
        (ombm.SegmentFormatError, ValueError),
        (ombm.AddressError, ValueError),
        (ombm.ReadOnlyError, PermissionError),
        (ombm.ClosedError, ValueError),
        (ombm.CallTimeout, TimeoutError),
    ]:
        assert issubclass(cls, builtin), cls


# ---- create_segment
@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"size": 0}, ValueError),
        ({"size": -1}, ValueError),
        ({"size": 1 << 50}, ValueError),  # beyond the machine
        ({"size": 1 << 40}, ombm.SharedMemoryFullError),  # beyond /dev/shm's free space
        ({"size": 64.0}, TypeError),
        ({"size": "64"}, TypeError),
        ({"size": True}, TypeError),
        ({"size": None}, TypeError),
        ({"size": 64, "unit": 100}, ValueError),
        ({"size": 64, "unit": 96}, ValueError),  # not a multiple of the 64-byte line
        ({"size": 64, "unit": 32}, ValueError),
        ({"size": 64, "unit": 0}, ValueError),
        ({"size": 64, "unit": -64}, ValueError),
        ({"size": 64, "unit": "64"}, TypeError),
        ({"size": 64, "unit": 64.0}, TypeError),
        ({"size": 64, "mode": 7}, ValueError),
        ({"size": 64, "mode": "message"}, ValueError),
        ({"size": 64, "mode": ombm.CONVENTIONAL, "signal_on_write": True}, ValueError),
        ({"size": 64, "signal_on_write": "yes"}, TypeError),
        ({"size": 64, "name": "a/b"}, ValueError),
        ({"size": 64, "name": "../escape"}, ValueError),
        ({"size": 64, "name": ".."}, ValueError),
        ({"size": 64, "name": "."}, ValueError),
        ({"size": 64, "name": ".hidden"}, ValueError),
        ({"size": 64, "name": "nul\0byte"}, ValueError),
        ({"size": 64, "name": "x" * 201}, ValueError),
        ({"size": 64, "name": ""}, ValueError),
        ({"size": 64, "name": "sp ace"}, ValueError),
        ({"size": 64, "name": "é"}, ValueError),
        ({"size": 64, "name": b"bytes"}, TypeError),
        ({"size": 64, "name": 42}, TypeError),
    ],
)
def test_create_segment_rejects_bad_arguments_and_creates_nothing(kwargs, error):
    before_mine, before_all, fds = my_objects(), set(os.listdir(FOLDER)), open_fds()
    with pytest.raises(error):
        ombm.create_segment(**kwargs)
    assert my_objects() == before_mine
    assert not any(f.startswith("seg-") and "escape" in f for f in set(os.listdir(FOLDER)) - before_all)
    assert not os.path.exists(os.path.join(os.path.dirname(FOLDER), "escape"))
    assert open_fds() <= fds


def test_a_taken_name_is_refused_and_the_segment_is_untouched():
    with ombm.create_segment(128, name=f"core-taken-{os.getpid()}") as seg:
        r = seg.bind()
        r.write(0, b"mine")
        with pytest.raises(ombm.SegmentExistsError) as info:
            ombm.create_segment(4096, name=seg.name)
        assert isinstance(info.value, FileExistsError)
        with ombm.open_segment(seg.name) as again:
            assert again.size == 128 and again.bind().read(0, 4) == b"mine"


# ---- open_segment
def test_open_segment_of_an_absent_name():
    with pytest.raises(ombm.SegmentNotFoundError) as info:
        ombm.open_segment(f"core-absent-{os.getpid()}")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ombm.OmbmError)
    assert not os.path.exists(os.path.join(FOLDER, f"seg-core-absent-{os.getpid()}"))


@pytest.mark.parametrize("name, error", [("a/b", ValueError), ("..", ValueError), ("x" * 201, ValueError), (7, TypeError)])
def test_open_segment_rejects_bad_names(name, error):
    with pytest.raises(error):
        ombm.open_segment(name)


def _header(**overrides) -> bytes:
    fields = {
        "magic": L.SEG_MAGIC,
        "version": L.SEG_VERSION,
        "mode": 1,
        "size": 4096,
        "unit": 64,
        "flags": 1,
        "segid": 12345,
        "pid": 0,
        "cap": L.DIR_CAPACITY,
        "start": 0,
        "dirver": 0,
    }
    fields.update(overrides)
    return L.SEG_HEADER.pack(*fields.values())


def _garbage(seed: int, n: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


FULL = L.HEADER_SIZE + 4096


@pytest.mark.parametrize(
    "what, content",
    [
        ("random bytes", _garbage(1, FULL)),
        ("zeros (a half-made segment)", bytes(FULL)),
        ("empty file", b""),
        ("shorter than the header", _header() + bytes(100)),
        ("foreign magic", _header(magic=b"NOTOMBM!") + bytes(FULL - 64)),
        ("future layout version", _header(version=99) + bytes(FULL - 64)),
        ("unknown mode", _header(mode=9) + bytes(FULL - 64)),
        ("unit not a multiple of the line", _header(unit=100) + bytes(FULL - 64)),
        ("zero unit", _header(unit=0) + bytes(FULL - 64)),
        ("zero size", _header(size=0) + bytes(FULL - 64)),
        ("wrong directory capacity", _header(cap=7) + bytes(FULL - 64)),
        ("data truncated", _header(size=1 << 20) + bytes(FULL - 64)),
        ("absurd size", _header(size=(1 << 64) - 1) + bytes(FULL - 64)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_open_segment_rejects_a_corrupt_foreign_or_truncated_header(what, content):
    name = f"core-bad-{os.getpid()}"
    path = os.path.join(FOLDER, f"seg-{name}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, content)
        os.close(fd)
        fds = open_fds()
        error = raised_by(ombm.open_segment, name)
        assert isinstance(error, ombm.SegmentFormatError), error
        assert isinstance(error, ValueError) and isinstance(error, ombm.OmbmError)
        del error
        assert open_fds() <= fds, "a rejected segment must not keep a file descriptor open"
        with open(path, "rb") as f:
            assert f.read() == content, "a rejected segment must not be modified"
        if not content[:8].strip(b"\0"):
            # a half-made segment (its magic never published) nobody is creating (no creation lock):
            # its creator died mid-create, and create_segment takes the name (issue 11, item 6)
            ombm.create_segment(64, name=name).release()
            assert not os.path.exists(path)
        elif content[:8] != L.SEG_MAGIC:
            # nor may create_segment take a foreign object's name over: it is not ours to remove
            with pytest.raises(ombm.SegmentExistsError):
                ombm.create_segment(64, name=name)
            assert os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_gc_leaves_a_segment_of_another_layout_version_alone():
    name = f"core-v99-{os.getpid()}"
    path = os.path.join(FOLDER, f"seg-{name}")
    content = _header(version=99) + bytes(FULL - 64)
    with open(path, "xb") as f:
        f.write(content)
    try:
        ombm.core.admin.gc()
        assert os.path.exists(path)
        with open(path, "rb") as f:
            assert f.read() == content
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_open_segment_of_a_symlink_is_a_format_error():
    name = f"core-link-{os.getpid()}"
    path = os.path.join(FOLDER, f"seg-{name}")
    os.symlink("/etc/hostname", path)
    try:
        with pytest.raises(ombm.SegmentFormatError):
            ombm.open_segment(name)
    finally:
        os.unlink(path)


def test_open_segment_never_follows_a_symlink():
    name = f"core-link2-{os.getpid()}"
    path = os.path.join(FOLDER, f"seg-{name}")
    os.symlink("/etc/hostname", path)
    try:
        with open("/etc/hostname", "rb") as f:
            before = f.read()
        with pytest.raises(ombm.SegmentFormatError):
            ombm.open_segment(name)
        with open("/etc/hostname", "rb") as f:
            assert f.read() == before
    finally:
        os.unlink(path)


def test_bogus_directory_entries_and_fifo_files_are_treated_as_absent():
    """A directory entry naming a missing or hostile FIFO must not break senders."""
    with ombm.create_segment(256) as seg:
        region = seg.bind()
        receiver = ombm.Receiver()
        try:
            got = []
            receiver.add_handler(region.address, 256, lambda a: got.append(a - region.address))
            missing = seg.directory.claim(L.KIND_RECEIVER, 0x1234_5678_9ABC_DEF1, 0, 1 << 60)
            hostile_token = 0x0FED_CBA9_8765_4321
            hostile_path = namespace.fifo_path(hostile_token)
            with open(hostile_path, "wb") as f:
                f.write(L.FIFO_HEADER.pack(L.FIFO_MAGIC, L.FIFO_VERSION, 1 << 30, 0, 0, 0, hostile_token, 0))
                f.write(bytes(4096))
            hostile = seg.directory.claim(L.KIND_RECEIVER, hostile_token, 0, 256)
            try:
                region.write(0, b"x" * 128)
                while receiver.dispatch_pending():
                    pass
                assert got == [0, 64]
            finally:
                seg.directory.free(missing)
                seg.directory.free(hostile)
                os.unlink(hostile_path)
        finally:
            receiver.close()


# ---- regions
def test_write_past_the_end_raises_and_changes_nothing(region):
    before = region.read(0, 1000)
    for offset, data in [(999, b"ab"), (1000, b"a"), (-1, b"a"), (0, bytes(1001)), (10**12, b"a")]:
        with pytest.raises(ombm.AddressError):
            region.write(offset, data)
    assert region.read(0, 1000) == before


def test_write_with_bad_types_raises_type_error_and_changes_nothing(region):
    before = region.read(0, 1000)
    for offset, data in [(0.0, b"a"), ("0", b"a"), (None, b"a"), (0, 5), (0, "text"), (0, None)]:
        with pytest.raises(TypeError):
            region.write(offset, data)
    assert region.read(0, 1000) == before


def test_read_out_of_bounds(region):
    for offset, n in [(999, 2), (-1, 1), (0, 1001), (0, -1)]:
        with pytest.raises(ombm.AddressError):
            region.read(offset, n)
    with pytest.raises(TypeError):
        region.read(1.5, 1)


def test_bind_rejects_a_non_bool():
    with ombm.create_segment(64) as seg:
        with pytest.raises(TypeError):
            seg.bind(writable="no")
        assert not seg._regions


def test_offset_of_outside_the_region(region):
    for address in (region.address - 1, region.address + 1000):
        with pytest.raises(ombm.AddressError):
            region.offset_of(address)


# ---- addresses and handlers
def test_address_outside_every_region(region):
    for address in (0, 8, 12345, region.address - 1, region.address + region.size, 1 << 62):
        with pytest.raises(ombm.AddressError) as info:
            ombm.signal(address)
        assert isinstance(info.value, ValueError)
        with pytest.raises(ombm.AddressError):
            find_region(address)
    for bad in ("0", 1.0, None, True):
        with pytest.raises(TypeError):
            ombm.signal(bad)


def test_handler_ranges_must_lie_inside_one_region(region):
    receiver = ombm.Receiver()
    try:
        for address, size in [(region.address, 1001), (region.address + 999, 2), (region.address, 0),
                              (region.address, -5), (12345, 8)]:
            with pytest.raises(ombm.AddressError):
                receiver.add_handler(address, size, print)
        for size in (1.0, "8", True):
            with pytest.raises(TypeError):
                receiver.add_handler(region.address, size, print)
        assert not any(e.kind == L.KIND_RECEIVER for e in region.segment.directory.entries())
    finally:
        receiver.close()


@pytest.mark.parametrize("fn", [None, 42, "print", b"x"])
def test_handler_that_is_not_callable(region, fn):
    before = my_objects()
    error = in_fresh_thread(lambda: ombm.signal_handler(region.address, 8, fn))
    assert isinstance(error, TypeError)
    assert my_objects() == before, "no receiver FIFO for a refused handler"
    with ombm.Dispatcher() as dispatcher:
        with pytest.raises(TypeError):
            dispatcher.signal_handler(region.address, 8, fn)
    assert not any(e.kind == L.KIND_RECEIVER for e in region.segment.directory.entries())


@pytest.mark.parametrize("timeout, error", [(-1, ValueError), (-0.001, ValueError), (float("nan"), ValueError),
                                            ("1", TypeError), (True, TypeError), ([], TypeError)])
def test_sig_wait_rejects_a_bad_timeout(timeout, error):
    raised = in_fresh_thread(lambda: ombm.sig_wait(timeout))
    assert isinstance(raised, error), raised



def test_sig_wait_with_a_bad_timeout_creates_nothing():
    before = my_objects()
    seen = []

    def run():
        try:
            ombm.sig_wait(-1)
        except ValueError:
            pass
        seen.extend(my_objects() - before)
        ombm.core.signals.current_receiver().close()

    in_fresh_thread(run)
    assert seen == []



def test_signal_handler_outside_every_region_creates_nothing():
    before = my_objects()
    seen = []

    def run():
        try:
            ombm.signal_handler(12345, 8, print)
        except ombm.AddressError:
            pass
        seen.extend(my_objects() - before)
        ombm.core.signals.current_receiver().close()

    in_fresh_thread(run)
    assert seen == []


# ---- settings and FIFOs
@pytest.mark.parametrize(
    "changes, error",
    [
        ({"wait": "busy"}, ValueError),
        ({"signal_path": "carrier-pigeon"}, ValueError),
        ({"spin_us": -1}, ValueError),
        ({"spin_us": "50"}, ValueError),
        ({"fifo_capacity": 100}, ValueError),
        ({"fifo_capacity": 1}, ValueError),
        ({"fifo_capacity": 1 << 21}, ValueError),
        ({"fifo_capacity": 128.0}, TypeError),
        ({"load_aware": 1}, TypeError),
        ({"no_such_setting": 1}, TypeError),
    ],
)
def test_configure_rejects_bad_settings_and_keeps_the_old_ones(changes, error):
    before = ombm.settings()
    with pytest.raises(error):
        ombm.configure(**changes)
    assert ombm.settings() == before


@pytest.mark.parametrize("capacity, error", [(0, ValueError), (3, ValueError), (1 << 21, ValueError),
                                             (4.0, TypeError), (True, TypeError)])
def test_fifo_capacity_must_be_a_power_of_two(capacity, error):
    before = my_objects()
    with pytest.raises(error):
        Fifo(capacity)
    with pytest.raises(error):
        ombm.Receiver(capacity=capacity)
    assert my_objects() == before


def test_fault_injection_rejects_a_bad_probability(procs):
    for value in ("2", "-0.1", "often"):
        run = procs.python("import ombm", env={"OMBM_FAULT_DROP": value})
        assert run.returncode != 0
        assert "ValueError" in run.stderr and "OMBM_FAULT_DROP" in run.stderr


def test_struct_sizes_are_what_the_tests_assume():
    assert L.SEG_HEADER.size == 64 and struct.calcsize("<I") == 4
