"""Types of ``ombm._native`` (source: ``_native/``): atomics, futexes, the signal FIFO, frames,
the fused copy+checksum, the native write path and the RPC lanes.

Every address is an ``int`` (a ``uintptr_t`` in C): 8-byte aligned for the 64-bit operations and
the FIFO, 4-byte aligned for the 32-bit ones; an unaligned or null address raises ``ValueError``.
Every function takes its arguments by position only.
"""

from collections import deque
from collections.abc import Callable
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, final

from _typeshed import ReadableBuffer, WriteableBuffer
from typing_extensions import disjoint_base

_K = TypeVar("_K")  # what a frame's kind byte decodes to: the objects of the ``kinds`` table
_C = TypeVar("_C")  # a RequestIntake's connection objects, handed back with their frames
_R_co = TypeVar("_R_co", covariant=True)  # a Writer's receiver references, handed back to ``after``

# ---- constants (FIFO_* and CELL_SIZE mirror ombm._layout; _layout.check_native() proves it)
FIFO_TAIL: Final[Literal[64]]
FIFO_HEAD: Final[Literal[128]]
FIFO_SLEEP: Final[Literal[192]]
FIFO_CAPACITY: Final[Literal[12]]  # the offset of the FIFO's capacity (u32)
FIFO_CELLS: Final[Literal[256]]
FIFO_DROPS: Final[Literal[40]]
CELL_SIZE: Final[Literal[32]]
FIFO_VERSION: Final[Literal[2]]
FIFO_PEER_CPU: Final[Literal[48]]
FIFO_STATE: Final[Literal[136]]
RECEIVER_RUNNING: Final[Literal[0]]
RECEIVER_SPINNING: Final[Literal[1]]
RECEIVER_ASLEEP: Final[Literal[2]]

PUSH_OK: Final[Literal[0]]
PUSH_WOKE: Final[Literal[1]]  # pushed and issued a futex wake
PUSH_DOORBELL: Final[Literal[2]]  # pushed; the receiver sleeps in an event loop: ring its doorbell
PUSH_FULL: Final[Literal[3]]  # dropped: the FIFO is full

WAIT_READY: Final[Literal[0]]
WAIT_TIMEOUT: Final[Literal[1]]
WAIT_STALLED: Final[Literal[2]]  # the tail moved but the head cell was never published

# CallResult.status, in the order Python tests them: <= LANE_ERROR_REPLY is a reply, >= LANE_UNSENT sent nothing
LANE_VALUE: Final[Literal[0]]  # the reply's result, unmarshalled
LANE_REPLY: Final[Literal[1]]  # a reply the lane did not unmarshal: its payload
LANE_ERROR_REPLY: Final[Literal[2]]  # an error reply: its payload
LANE_OTHER: Final[Literal[3]]  # another signal, or a frame the lane does not take: the signal
LANE_TIMEOUT: Final[Literal[4]]  # no signal within the patience
LANE_STALLED: Final[Literal[5]]  # the FIFO's head cell was claimed and never published
LANE_UNSENT: Final[Literal[6]]  # the call does not marshal or fit one frame: nothing sent
LANE_NOT_LENT: Final[Literal[7]]  # the lane holds no call ids: nothing sent
PIPE_CAP: Final[int]  # the most calls a PipeLane holds (their call ids span less than this)
UNDECODED: Final[object]  # PendingCall.value until the reply is unmarshalled

# ServeResult.status, in the order Python tests them: <= SERVE_LEARN a signal came
SERVE_REQUEST: Final[Literal[0]]  # a request frame the lane did not serve
SERVE_SIGNAL: Final[Literal[1]]  # any other signal
SERVE_LEARN: Final[Literal[2]]  # the lane served a request whose wait outlasted learn_ns
SERVE_TIMEOUT: Final[Literal[3]]  # no signal within timeout_s
SERVE_STALLED: Final[Literal[4]]  # the FIFO's head cell was claimed and never published

# ---- the shapes of what the lanes take and give
# a decoded frame: (kind, connection id, message id, fragment index, fragment count, ack, payload, credit)
_FrameFields = tuple[_K, int, int, int, int, int, bytearray, int]
# what a RequestIntake's lane hands back to the protocol: (served, replied, last, reply frame or None)
_Handback = tuple[int, int, int, int, tuple[tuple[int, bytes | None], ...]]  # ServerProtocol.reclaim's arguments
# a Writer's route for one unit: (FIFO addresses, their receiver references, software-only receivers)
_Route = tuple[tuple[FifoMap, ...], tuple[_R_co, ...], tuple[object, ...]]

class _Packer(Protocol):
    """A msgpack Packer (the lane's own: one thread at a time)."""

    def pack(self, obj: object, /) -> bytes: ...
    def reset(self) -> None: ...

class _Unpack(Protocol):
    """``msgpack.unpackb``, called as ``unpack(payload, ext_hook=..., strict_map_key=False)``."""

    def __call__(self, data: bytes, /, *, ext_hook: _ExtHook, strict_map_key: bool) -> Any: ...

_ExtHook = Callable[[int, bytes], Any]

# ---- atomics on shared memory, all sequentially consistent (so loads at least acquire, stores release)
def addr_of(buffer: ReadableBuffer, /) -> int:
    """The address of a buffer's first byte (the buffer must outlive its use)."""

def map_over(anonymous: ReadableBuffer, fd: int, offset: int, writable: bool, /) -> None:
    """Map the file ``fd`` from ``offset`` over the pages of the anonymous mapping ``anonymous``
    (``MAP_SHARED | MAP_FIXED``): the mapping then holds no descriptor (close ``fd`` after)."""

def guard(start: int, length: int, writable: bool, /) -> int:
    """Guard the mapping at ``[start, start+length)`` against SIGBUS (a shrunk file, a full
    ``/dev/shm``): a fault there replaces it with zero pages and marks it broken. Its slot."""

def unguard(slot: int, start: int, /) -> None:
    """The guarded mapping at ``start`` is about to be unmapped."""

def mapping_broken(slot: int, start: int, /) -> bool:
    """True once a SIGBUS replaced the guarded mapping at ``start`` with zero pages."""

def mappings_broken() -> int:
    """SIGBUSes in guarded mappings this process turned into broken mappings."""

def mappings_broken_reset() -> None: ...

def load64(address: int, /) -> int: ...
def load32(address: int, /) -> int: ...
def store64(address: int, value: int, /) -> None: ...
def store32(address: int, value: int, /) -> None: ...
def cas64(address: int, expected: int, desired: int, /) -> bool: ...
def cas32(address: int, expected: int, desired: int, /) -> bool: ...
def fetch_add64(address: int, delta: int, /) -> int:
    """Returns the old value."""

# ---- futex on a shared (non-private) 32-bit word, the GIL released
def futex_wait(address: int, expected: int, timeout_s: float, /) -> bool:
    """True if woken (False: timeout, or the word did not hold ``expected``)."""

def futex_wake(address: int, n: int = ..., /) -> int:
    """Wake up to ``n`` waiters (default: all); how many were woken."""

def set_load_aware(flag: bool, /) -> None:
    """Whether waits know the load and the peer's CPU (``ombm.configure(load_aware=...)``)."""

# ---- the signal FIFO (paper §3.1.2); ``fifo`` is a FifoMap: the FIFO's mapping and its validated geometry
@final
class FifoMap:
    """A FIFO's mapping (a writable buffer, kept alive) and the capacity its opener validated: every native
    operation on the FIFO takes its geometry from here, never from the shared header. ``ValueError`` if the
    capacity is not a power of two in [2, 2**20] or the mapping is too short for it."""

    def __init__(self, mapping: WriteableBuffer, capacity: int, /) -> None: ...
    @property
    def address(self) -> int:
        """The mapping's first byte."""

    @property
    def capacity(self) -> int:
        """The validated capacity (cells)."""

def fifo_push(fifo: FifoMap, segment_id: int, offset: int, /) -> int:
    """One of PUSH_* (a cell holding a word no ombm process writes: PUSH_FULL, counted in ``fifo_corrupt``)."""

def fanout(fifos: tuple[FifoMap, ...], segment_id: int, offset: int, /) -> int:
    """Push one signal to several FIFOs: 0 when all went well; else bits 0-14 count the drops, bit 15 says a
    futex wake was issued, and bit 16 + i that FIFO i wants its doorbell rung (for every i)."""

def fifo_pop(fifo: FifoMap, /) -> tuple[int, int] | None:
    """``(segment id, offset)``, or None when empty (or the head cell is not published yet)."""

def fifo_ready(fifo: FifoMap, /) -> bool:
    """Whether the head entry is published (a seq_cst load: the re-check after announcing sleep)."""

def fifo_skip_stalled(fifo: FifoMap, /) -> bool:
    """Retire a head cell whose producer is proven dead (claimed, never published); True if one was retired.
    Repairs (and counts) words a peer wrote."""

def fifo_wait(fifo: FifoMap, spin_ns: int, timeout_s: float, sleep_ok: bool = True, /) -> int:
    """Spin, then sleep, until the FIFO has an entry: one of WAIT_*."""

def fifo_wait_pop(
    fifo: FifoMap, spin_ns: int, timeout_s: float, sleep_ok: bool = True, /
) -> tuple[int, int, int] | int:
    """Wait, then pop: ``(segment id, offset, waited_ns)``, or WAIT_TIMEOUT / WAIT_STALLED."""

def fifo_wait_dispatch(
    fifo: FifoMap,
    table: dict[int, tuple[tuple[int, int, int, Callable[[int], object], Any], ...]],
    spin_ns: int,
    timeout_s: float,
    sleep_ok: bool = True,
    learn_ns: int | None = None,
    /,
) -> tuple[int, int, int] | int | float:
    """Wait, pop and run the handlers of ``table`` (segment id -> (lo, hi, base, fn, handle) entries)
    whose range covers the signal's offset: ``(handlers run, segment id, waited_ns)``, or
    WAIT_TIMEOUT / WAIT_STALLED. A handler's exception propagates (the signal consumed). With
    ``learn_ns``, a wait that ran a handler (or took a nudge) within ``learn_ns`` returns only the
    time left (``timeout_s`` less the time waited, a float >= 0)."""

@final
class SigWait:
    """A memory receiver's native ``wait`` (``core/signals.py``): the common case of
    :meth:`Receiver.wait <ombm.Receiver.wait>` in one call (a float timeout, the FIFO open, the
    policy's settings current, a handler ran with nothing to learn); the rest goes to ``wait(receiver,
    *args)`` and, after a first native wait that returned ``r``, ``wait_on(receiver, timeout, left, r)``.
    The receiver is held weakly."""

    def __init__(
        self,
        fifo: FifoMap,
        table: dict[int, tuple[tuple[int, int, int, Callable[[int], object], Any], ...]],
        owner: Any,
        receiver: Any,
        wait: Callable[..., float],
        wait_on: Callable[..., float],
        /,
    ) -> None: ...
    def wait(self, timeout: float | None = None) -> float:
        """``SigWait(t)``: run the handlers of the next signal, waiting up to ``timeout``; the time left."""

    def policy(self, settings: object, spin_ns: int, sleep_ok: bool, learn_ns: int | None, /) -> None:
        """The receiver's spin policy, set from ``settings`` (a wait defers to Python once they changed);
        ``learn_ns`` None: every wait returns to Python to be learnt from."""

def dispatch_counters() -> tuple[int, int]:
    """``(handler calls, unhandled signals)`` of :func:`fifo_wait_dispatch` in this process."""

def dispatch_counters_reset() -> None: ...

def fifo_corrupt() -> int:
    """FIFO words found corrupt by this process (pushes dropped, cells repaired)."""

def fifo_corrupt_reset() -> None: ...

# ---- frames (ombm.transport.wire) and the checksum
def frame_encode(
    kind: int, connection_id: int, message_id: int, payload: ReadableBuffer, frag_index: int, frag_count: int,
    ack: int, credit: int, /,
) -> bytes:
    """The frame: payload + trailer. ``ValueError`` for a field out of range."""

def frame_decode(view: ReadableBuffer, kinds: tuple[_K | None, ...], /) -> _FrameFields[_K]:
    """Validate and copy out the frame ending ``view``; ``kinds[k]`` is what kind byte k decodes to (None:
    invalid). ``ValueError`` for anything wrong."""

SPLIT_MIN: int
SPLIT_CODE: int

def frame_split(view: ReadableBuffer, /) -> tuple[bytes, bytes | None, int, bytes]:
    """The payload of the frame ending ``view`` as the RPC lanes take it (checked as frame_decode,
    ``ValueError`` likewise): ``(env, big, at, header)``, the body of the first msgpack bin or ext of
    ``SPLIT_MIN`` bytes or more copied out into ``big``, the item (``header`` + body) replaced in
    ``env`` at ``at`` by ext ``SPLIT_CODE`` holding one zero byte; ``big`` None: ``env`` is the whole
    payload (and ``header`` empty)."""

def overloaded() -> bool:
    """Whether more tasks are runnable than the machine has CPUs, as the waits see it (read at most
    every 2 ms; False when the waits do not know the load: ``configure(load_aware=False)``)."""

def pack_direct(packer: Any, message: list[Any], /) -> bytes | None:
    """What the RPC lanes write for a call ``[method, [args...], {}]`` or a reply ``[0, result]``
    before asking ``packer`` (a ``marshal.packer()``): the same bytes as ``marshal.encode_call`` /
    ``encode_result``, or None where they leave it to the packer (for tests)."""

def unpack_plain(env: bytes, big: bytes | None = None, at: int = 0, /) -> list[Any] | None:
    """What the RPC lanes make of a plain payload themselves (a reply ``[0, result]`` or a call
    ``[method, [args...], {}]`` of None, bools, ints, floats, strs and bins; ``big``: the bin
    ``frame_split`` took out at ``at``): the objects ``msgpack.unpackb`` makes, or None where the
    lanes ask msgpack (for tests)."""

CRC32C_IMPL: Final[Literal["sse4.2+vpclmul", "sse4.2+pclmul", "sse4.2", "armv8-crc", "table"]]
"""Which CRC32C the checksum uses, chosen at import: on x86-64 the crc32 instruction, with runs of 1 KiB and more
folded by carry-less multiplies where the CPU has them (``"sse4.2+vpclmul"``: 256-bit, ``"sse4.2+pclmul"``:
128-bit; ``"sse4.2"``: none), ``"armv8-crc"`` or ``"table"``. The environment can force a lesser one:
``OMBM_CRC32C=table``, ``=sse4.2`` (no multiplies) or ``=pclmul`` (no 256-bit ones)."""

def checksum(buffer: ReadableBuffer, crc: int = 0, /) -> int:
    """The CRC32C (Castagnoli, RFC 3720) of a buffer, continued from ``crc``: the CRC of what came before it,
    so ``checksum(b, checksum(a)) == checksum(a + b)``. A 32-bit value."""

def checksum_table(buffer: ReadableBuffer, crc: int = 0, /) -> int:
    """``checksum`` computed by the portable table, whatever ``CRC32C_IMPL`` is (for the tests)."""

def copy_checksum(dst: WriteableBuffer, src: ReadableBuffer, /) -> int:
    """Copy ``src`` into the start of ``dst``; the CRC32C of ``src``, computed in the same pass."""

def span_put(segment: WriteableBuffer, offset: int, seq: int, data: ReadableBuffer, /) -> int:
    """Write a bulk span at ``segment[offset]``: header (u64 seq, u64 length), then ``data``; the CRC32C of header and
    data, computed in that copy (rpc/bulk.py). ValueError if it does not fit."""

def span_take(segment: ReadableBuffer, offset: int, length: int, seq: int, crc: int, /) -> bytes | None:
    """The bulk span at ``segment[offset]`` copied out once (the checksum folded into the copy), then checked: its data
    if the CRC32C and the header's seq and length match, None if not. ValueError if it is not inside the segment."""

def span_view(segment: ReadableBuffer, offset: int, length: int, seq: int, /) -> ReadableBuffer | None:
    """The bulk span at ``segment[offset]`` lent in place, no copy, no checksum (the peer can still write it): a
    weak-referenceable object exporting its data read-only (``memoryview(span)``); its header (seq, length) copied once
    and checked, None if it does not match. ValueError if it is not inside the segment. The segment's buffer is
    held while the object (or any view derived from it) lives."""

def bulk_guard(pack: Callable[[object], bytes], threshold: int, error: type[Exception], /) -> Callable[[object], bytes]:
    """``pack``, except that a call ``[method, [args...], {kwargs}]`` or a reply ``[0, result]`` with a
    bytes-like argument, keyword value or result of ``threshold`` bytes or more raises ``error`` (rpc/marshal.py:
    the lanes leave it to Python, which sends it through the bulk segment)."""

# ---- a stream's small messages in batches (ombm.channels.stream: send_many, recv_many)

def stream_put_many(wbuf: WriteableBuffer, first: int, slot_size: int, slots: int, max_payload: int,
                    connection_id: int, seq: int, limit: int, messages: list[Any], start: int,
                    records: list[Any], /) -> tuple[int, int]:
    """Write ``messages[start:]`` as one-fragment DATA frames ``seq``, ``seq + 1``, ... (each ending at its
    slot's end, payload copied and checksummed in one pass, the checksum stored last), without signals,
    while each is ``bytes`` of at most ``max_payload`` and its fragment is below ``limit``; append each
    one's record ``(seq, 0, 1, length, 0, message, length, checksum)`` to ``records``.
    ``(count, bytes)``; on an error, the frames recorded were written and sealed."""

def stream_put_one(wbuf: WriteableBuffer, first: int, slot_size: int, slots: int, max_payload: int,
                   connection_id: int, seq: int, limit: int, message: object, credit_base: int,
                   writer: Writer[Any], /) -> tuple[int, int, int, int, int, bytes, int, int] | None:
    """``Stream.send``'s common case: if ``message`` is ``bytes`` of at most ``max_payload`` and ``seq`` is
    below ``limit``, write it as fragment ``seq`` (as :func:`stream_put_many`) and signal its slot through
    ``writer`` unless the reader says it is reading (:func:`stream_reader_reading`); its record. Else None:
    nothing written."""

def stream_take_many(buf: ReadableBuffer, first: int, slot_size: int, slots: int, max_payload: int,
                     connection_id: int, expected: int, limit: int, /) -> tuple[list[bytearray], int]:
    """The one-fragment bytes messages there in order from fragment ``expected`` on, at most ``limit``,
    each copied out once with its checksum folded into the copy and taken only if its private trailer
    seals it and says exactly what the stream expects there; stops at the first that is not.
    ``(messages, bytes)``."""

def stream_reader_reading(credit_base: int, /) -> bool:
    """A Stream's writer, after it stored a frame's checksum: a full fence, then whether the reader's
    reading word in the credit channel at ``credit_base`` is set and the reader is on this host (it looks
    at the slots again before it waits: no signal needed)."""

def stream_reader_idle(credit_base: int, /) -> None:
    """A Stream's reader, before its last look and a wait: clear its reading word in the credit channel at
    ``credit_base``, then a full fence."""

def raw_drain(fifo: FifoMap, segment_id: int, lo: int, hi: int, unit_size: int, limit: int,
              units: list[int], /) -> tuple[int, int]:
    """A raw reader's own signal FIFO drained without a Python call per signal: up to ``limit`` entries
    popped; the unit ``(offset - lo) // unit_size`` of each of ``segment_id`` in ``[lo, hi)`` appended to
    ``units``. ``(popped, foreign)``: foreign counts the others that are not nudges (segment 0)."""

def raw_take_many(buf: ReadableBuffer, first: int, slot_size: int, max_payload: int, checksummed: bool,
                  ordered: bool, units: list[int] | deque[int], last_seq: int, last_gen: list[int],
                  published_offset: int, horizon: int, limit: int, frame_type: Any, view: bool = False,
                  /) -> tuple[list[Any], int, int, int, int, int, int]:
    """A raw reader's take (``RawChannel._take``'s checks) of the new good frames of the signalled
    ``units`` in turn (a list, or a deque the units looked at are popped from), until ``limit`` frames:
    each copied out once (checksummed in the same pass if the channel carries checksums) and delivered
    as ``frame_type(unit, seq, generation, data)``; with ``view`` (``buf`` a memoryview) ``data`` is a
    slice of ``buf``, checksummed in place, nothing copied. ``last_gen`` is updated in place.
    ``(frames, units used, last_seq, received, missed, torn, stale)``."""

# ---- the bridge (ombm.net.replica, ombm.net.bridge)

def unit_delta(src: ReadableBuffer, shadow: WriteableBuffer, lo: int, hi: int, /) -> int:
    """Where ``src[lo:hi]`` first differs from ``shadow[lo:hi]`` (counted from ``lo``; ``hi - lo`` if
    nowhere), ``src`` from there to ``hi`` copied into ``shadow`` in the same call. ValueError unless
    ``0 <= lo <= hi <= len`` of both."""

def bridge_spin(fifo: FifoMap, fd: int, spin_ns: int, /) -> int:
    """Spin (the GIL released, yielding the CPU between polls after the first 2 µs) until ``fifo``
    has an entry or ``fd`` is readable: the ns it took, or -1 if ``spin_ns`` passed first."""

# ---- the message write (ombm.core.segment)
def writer_signals_sent() -> int:
    """Signals pushed by Writer objects in this process."""

def writer_signals_reset() -> None:
    """Zero the Writer counter (after fork)."""

# ---- fault injection (ombm.core.faults), in the native write path and drawn by Python's
def faults_set(drop: float, corrupt: float, seed: int, /) -> None:
    """The probabilities that a signal to a receiver is dropped and that a written message has one bit
    flipped, and the generator's seed (its low 64 bits). ``ValueError`` for a probability outside [0, 1]."""

def fault_drop() -> bool:
    """A draw: drop the next signal to one receiver? (A drop is counted.)"""

def fault_corrupt_bit(nbytes: int, /) -> int:
    """A draw for a message of ``nbytes``: the bit to flip, in [0, 8 * nbytes) (counted), or -1."""

def fault_counters() -> tuple[int, int]:
    """``(signals dropped, messages corrupted)`` by fault injection in this process."""

def fault_counters_reset() -> None:
    """Zero the fault counters (after fork)."""

@final
class Writer(Generic[_R_co]):
    """The fast path of ``Region.write``: copy, then signal every unit whose last byte was written, through
    the routes ``route(unit offset)`` gives (cached until the segment's directory version moves). Fault
    injection happens here (``faults_set``): signals dropped per receiver, and with ``message`` (a
    message-consistency segment) one bit of a written message flipped before its signals."""

    def __init__(
        self,
        base: int,
        size: int,
        unit: int,
        version_address: int,
        segment_id: int,
        slow: Callable[[int, ReadableBuffer], None],
        route: Callable[[int], _Route[_R_co]],
        deliver: Callable[[int], object],
        after: Callable[[int, tuple[_R_co, ...]], object],
        message: bool,
        /,
    ) -> None: ...
    def write(self, offset: int, data: ReadableBuffer, /) -> None: ...
    def signal(self, offset: int, /) -> None:
        """Raise the signal of the unit holding ``offset``, writing nothing."""
    def send(self, data: ReadableBuffer, /) -> None:
        """Write ``data`` to end at the end of the next unit (round robin): that unit's one signal."""

    def close(self) -> None:
        """Stop writing: every later write takes the slow path."""

# ---- the RPC lanes (ombm.rpc.client, ombm.rpc.server)
@final
class CallResult:
    """What :meth:`CallLane.call` did (made only by the lane; read-only)."""

    @property
    def status(self) -> int:
        """A LANE_* constant."""

    @property
    def value(self) -> Any:
        """The call's result, any unmarshalled object (LANE_VALUE); the reply's payload bytes (LANE_REPLY,
        LANE_ERROR_REPLY); else None."""

    @property
    def waited_ns(self) -> int:
        """How long the call waited for a signal."""

    @property
    def call_id(self) -> int:
        """The call the protocol must settle (a reply after reclaim(): end it; LANE_OTHER, LANE_TIMEOUT,
        LANE_STALLED: adopt it), 0 if none."""

    @property
    def segment_id(self) -> int:
        """The signal's segment (LANE_OTHER), else 0."""

    @property
    def offset(self) -> int:
        """The signal's offset (LANE_OTHER), else 0."""

@final
class ServeResult(Generic[_C, _K]):
    """What :meth:`RequestIntake.serve` returns (made only by the intake; read-only)."""

    @property
    def status(self) -> int:
        """A SERVE_* constant."""

    @property
    def waited_ns(self) -> int:
        """How long the last wait for a signal took."""

    @property
    def connection(self) -> _C | None:
        """The request's connection (SERVE_REQUEST), else None."""

    @property
    def fields(self) -> _FrameFields[_K] | None:
        """The request frame as frame_decode returns it (SERVE_REQUEST), None if it failed its checks."""

    @property
    def handback(self) -> _Handback | None:
        """The lane's state, if the lane was on (SERVE_REQUEST), else None."""

    @property
    def executed(self) -> tuple[bytes, bool] | None:
        """The reply (payload, error) of a request the lane ran whose reply needs several frames (SERVE_REQUEST),
        else None."""

    @property
    def segment_id(self) -> int:
        """The signal's segment (SERVE_SIGNAL), else 0."""

    @property
    def offset(self) -> int:
        """The signal's offset (SERVE_SIGNAL), else 0."""

@final
class CallLane:
    """A synchronous RPC call's no-loss path in one native call."""

    def __init__(
        self,
        request_writer: Writer[object],
        fifo: FifoMap,
        reply_segment_id: int,
        reply_base: int,
        reply_size: int,
        reply_slot: int,
        connection_id: int,
        max_payload: int,
        packer: _Packer,
        unpack: _Unpack,
        ext_hook: _ExtHook,
        /,
    ) -> None: ...
    @property
    def message(self) -> bytes | None:
        """The last call's marshalled message (None before the first)."""

    @property
    def lent(self) -> bool:
        """Whether the lane holds the protocol's state."""

    def call(
        self, method: str, args: tuple[object, ...], kwargs: dict[str, object], spin_ns: int, sleep_ok: bool, /
    ) -> CallResult: ...

    def take(
        self, limit: int, spin_ns: int, timeout_s: float, sleep_ok: bool, /
    ) -> tuple[int, int, list[tuple[int, int, Any]]]:
        """The pipelined calls' drain: wait up to ``timeout_s`` (0: not at all) for a signal, then take
        every one in the FIFO (at most ``limit``): ``(WAIT_* status, waited_ns, entries)``, each entry
        ``(LANE_VALUE, call id, result)``, ``(LANE_REPLY | LANE_ERROR_REPLY, call id, payload bytes)``
        or ``(LANE_OTHER, segment id, offset)``."""

    def lend(self, next_id: int, patience_s: float, /) -> None: ...
    def reclaim(self) -> tuple[int, int, int | None, float | None] | None:
        """``(next_id, calls, current call id or None, last round trip in s or None)``, or None if not lent."""

    def close(self) -> None:
        """Forget the channels (before they are unbound)."""

@disjoint_base
class FutureCore:
    """A pipelined call's future's concurrent.futures state (rpc.client.Future subclasses it)."""

    _state: str
    _result: Any
    _exception: BaseException | None
    _pending: Any

@disjoint_base
class PendingCall:
    """One call's completion state, shared by the pipelined lane and the client (rpc.client._Pending)."""

    done: bool
    data: bytes | bytearray
    value: object
    error: bool
    gone: bool
    future: Any
    wake: Any
    ready: Any
    client: Any
    call_id: int
    deadline: float
    watched: bool

@final
class PipeLane:
    """Pipelined calls' (call_async) no-loss path: marshalled, written and completed natively."""

    def __init__(
        self,
        request_writer: Writer[object],
        fifo: FifoMap,
        reply_segment_id: int,
        reply_base: int,
        reply_size: int,
        reply_slot: int,
        connection_id: int,
        max_payload: int,
        packer: _Packer,
        unpack: _Unpack,
        ext_hook: _ExtHook,
        running: str,
        pending: str,
        finished: str,
        future_type: type[FutureCore],
        pending_type: type[PendingCall],
        timer: Any,
        /,
    ) -> None: ...
    @property
    def lent(self) -> bool:
        """Whether the lane holds the protocol's state."""

    @property
    def outstanding(self) -> int:
        """The calls in its table (in flight or queued behind the window)."""

    @property
    def patience(self) -> float:
        """The patience lent (s): the oldest call in flight waits that long before the protocol takes it."""

    @property
    def oldest_sent(self) -> float | None:
        """The oldest call in flight's send time (``time.monotonic()`` s), None if none is in flight."""

    def lend(
        self, next_id: int, patience_s: float, window: int,
        calls: list[tuple[int, int, bytes, float | None, Any]], /,
    ) -> None:
        """Take the protocol's call ids with its outstanding calls ``(id, ack, message, sent_at | None, future)``."""

    def call(
        self, client: Any, method: str, args: tuple[object, ...], kwargs: dict[str, object], timeout: float,
        ready: Any = None, /,
    ) -> Any:
        """The call made on the lane: its future (made natively, with its ``future_type`` and
        ``pending_type``), written or queued behind the window; None (nothing done) for the ordinary
        path: nothing lent, the lane closed, no room, a call that does not fit one frame, a timeout
        below the patience."""

    def take(
        self, limit: int, spin_ns: int, timeout_s: float, sleep_ok: bool, /
    ) -> tuple[int, int, list[tuple[int, int, Any]], list[Any], int]:
        """``CallLane.take``'s drain, completing the lane's own calls: ``(WAIT_* status, waited_ns,
        entries, futures Python must finish, signals taken)``."""

    def reclaim(self) -> tuple[int, int, float | None, int, list[tuple[int, int, bytes, float | None, Any]]] | None:
        """``(next_id, calls, last RTT s or None, bad frames, outstanding calls)``, or None if not lent."""

    def close(self) -> None:
        """Forget the channels (before they are unbound); the calls stay until reclaimed."""

@final
class RequestIntake(Generic[_C, _K]):
    """The RPC server's serving loop and its native lane."""

    def __init__(
        self,
        fifo: FifoMap,
        kinds: tuple[_K | None, ...],
        methods: dict[str, Callable[..., object]],
        stats: dict[str, int],
        unpack: _Unpack,
        ext_hook: _ExtHook,
        packer: _Packer,
        execute: Callable[[bytes, int], tuple[bytes, bool]],
        finish: Callable[[object, Exception | None, int], tuple[bytes, bool]],
        /,
    ) -> None: ...
    def add(
        self,
        segment_id: int,
        connection: _C,
        base: int,
        size: int,
        slot_size: int,
        reply_writer: Writer[object] | None,
        connection_id: int,
        max_payload: int,
        limit: int,
        /,
    ) -> None: ...
    def remove(self, segment_id: int, /) -> None: ...
    def lane(self, segment_id: int, last: int, room: int, /) -> bool:
        """Serve that connection's simple requests natively from call id ``last`` on, keeping at most
        ``room`` of them (ServerProtocol.lane_room); False if it has no reply writer."""

    def take(self, segment_id: int, /) -> _Handback | None:
        """The lane's state handed back (the lane is off afterwards), or None if it was off."""

    def serve(self, spin_ns: int, timeout_s: float, sleep_ok: bool, learn_ns: int, /) -> ServeResult[_C, _K]:
        """What Python must see next; ``timeout_s`` bounds the whole call."""

    def linger(self, ns: int, /) -> None:
        """The next wait spins ``ns`` (at most 1 s) longer than the policy's budget, and does not count that
        time as the policy's (the client is copying a large reply)."""

    @property
    def served(self) -> int:
        """Requests served and answered on the lane since the intake was made."""

# ---- the bridge's native data path (net_engine.c; ombm.net.bridge)
@final
class BridgeEngine:
    def __init__(self, fifo: FifoMap, fd: int, sender: int, tag: int, max_age_us: int, mtu: int, key: bytes | None,
                 /) -> None: ...
    def add(self, key: int, segment_id: int, base: int, size: int, unit: int, shadow: bytearray, tags: object,
            own: bytearray, write: Callable[[int, memoryview], object], address: tuple[str, int],
            in_sync: bytearray, /) -> None: ...
    def remove(self, key: int, /) -> None: ...
    def set_mtu(self, mtu: int, /) -> None: ...
    def set_assembly(self, max_updates: int, max_bytes: int, timeout_s: float, /) -> None: ...
    def assemble(self, sender: int, entry: bytes, now_s: float, /) -> list[int]: ...
    def expire(self, now_s: float, /) -> None: ...
    def next_seq(self, now_us: int, /) -> int: ...
    def next_tag(self) -> int: ...
    def check(self, sender: int, seq: int, now_us: int, /) -> str: ...
    def commit(self, sender: int, seq: int, /) -> None: ...
    def forget(self, sender: int, /) -> None: ...
    def heard_ns(self, address: tuple[str, int], /) -> int: ...
    def counts(self) -> dict[str, int]: ...
    def run(self, spin_cap_ns: int, adaptive: bool, timeout_s: float, doorbell_fd: int, fds: tuple[int, ...], /
            ) -> tuple[list[tuple[int, int]], list[tuple[bytes, tuple[str, int]]], list[tuple[int, int]], int]: ...
    def takes(self, data: bytes | bytearray | memoryview, address: tuple[str, int], /) -> bool: ...

def bridge_mac(key: bytes, data: ReadableBuffer, /) -> bytes: ...
