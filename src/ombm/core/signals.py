"""Address-valued signals: handlers, ``signal``, ``sig_wait`` (paper §3.1).

The paper's kernel interface, per receiving thread:

* ``SignalHandler(vaddr, size, fn)`` -> :func:`signal_handler`: publish a
  directory entry for the range in its segment (so senders route to this
  thread's signal FIFO) and remember ``fn`` with the binding's base address;
* ``Signal(vaddr)`` -> :func:`signal`: translate ``vaddr`` to (segment,
  offset) and push it to every watching receiver;
* ``SigWait(t)`` -> :func:`sig_wait`: run handlers for pending signals,
  waiting (spin, then futex sleep) up to ``t``; returns the time left.

Delivery translates the "physical address" (segment id, offset) back into
*this* process's address: the binding's base + offset, so each receiver's
handler is called with its own address of the message. Signals to one
receiver are dispatched in FIFO order; a receiver runs every one of its
handlers whose range covers the offset.

:class:`Receiver` owns one FIFO; by default each thread gets one lazily
(``current_receiver()``). :class:`Dispatcher` owns a thread that runs handlers
as asynchronous calls, for programs that do not want to call ``sig_wait``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
import weakref
from typing import Callable, cast

from ombm import _layout as L
from ombm import _native
from ombm.core import lifecycle, namespace
from ombm.core import config as _config
from ombm.core.config import Settings, settings
from ombm.errors import AddressError, ClosedError, ForkedError
from ombm.core.fifo import Fifo
from ombm.core.segment import Region, find_region
from ombm.core.stats import COUNTERS

_log = logging.getLogger("ombm")
_STALLED = _native.WAIT_STALLED
_NEVER_LEARNS = 2**64 - 1  # wait_policy's learn_ns when the policy is fixed
_wait_pop = _native.fifo_wait_pop
_wait_dispatch = _native.fifo_wait_dispatch
_NUDGE = L.NUDGE_SEGMENT
# A receiver's handlers of one segment, as the native dispatch reads them: (lo, hi, base, fn, handle)
_Entry = tuple[int, int, int, Callable[[int], object], "SignalHandle"]


def _resolve(address: int, size: int, fn: Callable[[int], object]) -> tuple[Region, int]:
    """Validate a handler's arguments; return the region and the range's segment offset."""
    if not callable(fn):
        raise TypeError(f"signal handler must be callable, not {type(fn).__name__}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError("size must be an int")
    region = find_region(address)
    if size <= 0 or address + size > region.address + region.size:
        raise AddressError(f"range {address:#x}+{size} is not inside one bound region")
    return region, address - region.address


def _check_timeout(timeout: object) -> float:
    if timeout is None:
        return 1e9  # "forever"
    if type(timeout) is not float and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
        raise TypeError("timeout must be a number of seconds or None")
    if not timeout >= 0:
        raise ValueError("timeout must be >= 0")
    return timeout


class SignalHandle:
    """An enabled signal handler; ``disable()`` (idempotent) removes it."""

    def __init__(self, receiver: Receiver, region: Region, lo: int, hi: int, fn: Callable[[int], object]):
        self.receiver = receiver
        self.region = region
        self.lo, self.hi = lo, hi  # segment offsets [lo, hi)
        self.base = region.address  # translation: offset -> this binding's address
        self.fn = fn
        self.entry = region.segment.directory.claim(L.KIND_RECEIVER, receiver.fifo.token, lo, hi - lo)
        self.enabled = True

    @property
    def address(self) -> int:
        return self.base + self.lo

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def disable(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        self.receiver._remove(self)
        if not self.region.segment.released and self.entry.pid == namespace.me()[0]:  # a forked child
            self.region.segment.directory.free(self.entry)  # never frees its parent's entries

    def __enter__(self) -> SignalHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disable()


class Receiver:
    """One signal FIFO and the handlers it dispatches to."""

    _forked = False  # set in a forked child: this receiver is its parent's (ForkedError here)

    def __init__(self, *, capacity: int | None = None, kernel: bool | None = None) -> None:
        s = settings()
        self.kernel = s.signal_path == "kernel" if kernel is None else kernel
        lifecycle.arm()
        self.fifo = Fifo(s.fifo_capacity if capacity is None else capacity, kernel=self.kernel)
        with _all_lock:
            _all_receivers.add(self)  # closed at exit
        # segment id -> its handlers (the p->v table), replaced, never changed in place: a dispatch
        # in progress keeps the tuple it began with (_native.fifo_wait_dispatch reads it too)
        self._table: dict[int, tuple[_Entry, ...]] = {}
        self._lock = threading.Lock()
        self._fifo_map = self.fifo.fifo_map
        self._misses = 0  # consecutive waits that outlasted the spin cap
        # a memory receiver's wait is native in its common case (issue 13: on one CPU, the Python
        # around each wait cost about as much as the hand-over); the methods below are its other paths
        self._sig_wait = None if self.kernel else _native.SigWait(
            self._fifo_map, self._table, self.fifo, self, Receiver.wait, Receiver._wait_on)
        if self._sig_wait is not None:
            self.wait = self._sig_wait.wait  # type: ignore[method-assign]
        self._adopt(s)

    # -- registration
    def add_handler(self, address: int, size: int, fn: Callable[[int], object]) -> SignalHandle:
        if self.fifo.closed:
            raise self._closed_error()
        region, lo = _resolve(address, size, fn)
        handle = SignalHandle(self, region, lo, lo + size, fn)
        region._handles.add(handle)
        with self._lock:
            entry = (handle.lo, handle.hi, handle.base, handle.fn, handle)
            self._table[region.segment.id] = (*self._table.get(region.segment.id, ()), entry)
        return handle

    def _remove(self, handle: SignalHandle) -> None:
        seg_id = handle.region.segment.id
        with self._lock:
            entries = tuple(e for e in self._table.get(seg_id, ()) if e[4] is not handle)
            if entries:
                self._table[seg_id] = entries
            else:
                self._table.pop(seg_id, None)

    # -- delivery
    def _dispatch(self, seg_id: int, offset: int) -> int:
        ran = 0
        for lo, hi, base, fn, handle in self._table.get(seg_id, ()):
            if lo <= offset < hi and handle.enabled:
                ran += 1
                COUNTERS.signals_delivered += 1
                fn(base + offset)
        if not ran and seg_id != _NUDGE:
            COUNTERS.signals_unhandled += 1
        return ran

    def dispatch_pending(self, limit: int = 256) -> int:
        """Run the handlers of up to ``limit`` signals already in the FIFO, in FIFO order.

        Returns how many handler calls ran. A handler's exception propagates
        after its signal was consumed: the FIFO stays consistent and the
        later signals are still there for the next call.
        """
        ran = 0
        fifo = self.fifo
        pop = fifo.pop
        try:
            for _ in range(limit):
                item = pop()
                if item is None:
                    break
                ran += self._dispatch(*item)
        except AttributeError:  # a closed kernel FIFO has no socket
            self._check_open()
            raise
        if not ran and fifo._closed:  # checked only when nothing came: no cost per signal
            self._check_open()
        return ran

    def _check_open(self) -> None:
        if self.fifo._closed:
            raise self._closed_error()

    def _closed_error(self) -> ClosedError:
        if self._forked:
            return ForkedError("this receiver belongs to the process that forked this one: make a new one here")
        return ClosedError("receiver is closed")

    def wait_once(self, timeout: float) -> int:
        """Dispatch pending signals, or wait up to ``timeout`` for some and dispatch them."""
        ran = self.dispatch_pending()
        if ran or timeout <= 0:
            return ran
        item = self.pop_wait(timeout)
        return (self._dispatch(*item) if item else 0) + self.dispatch_pending()

    # Adaptive spin (DESIGN.md §6): spin up to the cap while signals come within it; after 8 waits
    # in a row that had to sleep, spin only 2 µs, probing with the full cap every 64th miss so a
    # peer that got faster is noticed. Only a wait that ended while spinning resets the misses (a
    # wait that slept includes the wake-up latency and says nothing about the peer).
    def _adopt(self, settings_now: Settings) -> None:
        self._settings = settings_now
        self._adaptive = settings_now.wait == "adaptive"
        self._sleep_ok = settings_now.wait == "sleep"  # "spin" never sleeps
        self._cap = int(settings_now.spin_us * 1000)
        self._set_budget(self._cap if self._misses < 8 else min(self._cap, 2000))

    def _miss(self) -> None:
        self._misses += 1
        if self._misses < 8:
            self._set_budget(self._budget)  # (the budget stays; what a wait must report changes)
        else:
            self._set_budget(self._cap if self._misses % 64 == 0 else min(self._cap, 2000))

    def _set_budget(self, budget_ns: int) -> None:
        """Set the spin budget, and the arguments of :meth:`wait`'s native call that follow from
        the policy: its spin, whether it may sleep, and the longest wait it need not learn from."""
        self._budget = budget_ns
        self._spin_ns = budget_ns if self._adaptive else 0
        self._may_sleep = self._adaptive or self._sleep_ok
        # None: every wait teaches (after a miss, a wait within the cap resets the misses)
        self._learn_ns = (None if self._misses else self._cap) if self._adaptive else _NEVER_LEARNS
        if self._sig_wait is not None:
            self._sig_wait.policy(self._settings, self._spin_ns, self._may_sleep, self._learn_ns)

    def pop_wait(self, timeout: float) -> tuple[int, int] | None:
        """Take the next signal, waiting (spin, then sleep) up to ``timeout`` seconds: its
        ``(segment id, offset)``, or None if none came. No handler runs: for owners of the
        receiver that dispatch their own segments (the RPC client and server) and hand the
        rest to :meth:`dispatch`."""
        if self.fifo._closed:
            raise ClosedError("receiver is closed")
        if self.kernel:
            return self.fifo.pop_wait(timeout) if timeout > 0 else self.fifo.pop()
        settings_now = _config.SETTINGS
        if settings_now is not self._settings:
            self._adopt(settings_now)
        if self._adaptive:
            r = _wait_pop(self._fifo_map, self._budget, timeout)
        else:
            r = _wait_pop(self._fifo_map, 0, timeout, self._sleep_ok)
        if type(r) is tuple:
            self.waited(r[2])
            return r[0], r[1]
        if r == _STALLED:
            self.fifo.retire_stalled()
        return None

    def wait_policy(self) -> tuple[int, bool, int]:
        """``(spin budget in ns, may sleep, learn_ns)`` for a native wait on this receiver's
        memory FIFO (the RPC call lane and serving loop); report how it ended with :meth:`waited`.
        A wait that took no longer than ``learn_ns`` teaches the policy nothing: a native loop of
        several waits need only report the others."""
        if _config.SETTINGS is not self._settings:
            self._adopt(_config.SETTINGS)
        if self._adaptive:
            return self._budget, True, 0 if self._misses else self._cap
        return 0, self._sleep_ok, _NEVER_LEARNS

    def waited(self, waited_ns: int) -> None:
        """Learn from a native wait that took a signal after ``waited_ns`` (adaptive spin)."""
        if self._adaptive:
            if waited_ns > self._cap:
                self._miss()
            elif self._misses:
                self._misses = 0
                self._set_budget(self._cap)

    def dispatch(self, segment_id: int, offset: int) -> int:
        """Run the handlers of one signal taken by :meth:`pop_wait`; how many ran."""
        if self.fifo._closed:
            raise ClosedError("receiver is closed")
        return self._dispatch(segment_id, offset)

    def wait(self, timeout: float | None = None) -> float:
        """``SigWait``: returns once a handler ran (time left) or after ``timeout`` with 0.0.

        The time left is the timeout less the time spent waiting (handlers' own
        run time is not charged). A memory receiver's ``wait`` is ``_native.SigWait.wait``, which
        does the same natively in the common case and calls this method for the others."""
        if type(timeout) is not float or not timeout >= 0:
            timeout = _check_timeout(timeout)
        if self.fifo._closed:  # nothing can signal a closed receiver: the wait would never end
            raise ClosedError("receiver is closed")
        if self.kernel:
            return self._wait_kernel(timeout)
        if _config.SETTINGS is not self._settings:
            self._adopt(_config.SETTINGS)
        # wait, take, run the handlers and count the time left in one native call: after a wake-up
        # (on one CPU, a context switch) the handler runs without a return to Python and back, and
        # the common case returns straight to the caller (issue 13)
        left = timeout if timeout < 3600.0 else 3600.0
        r = _wait_dispatch(self._fifo_map, self._table, self._spin_ns, left, self._may_sleep, self._learn_ns)
        if type(r) is float:  # a handler ran and the spin policy has nothing to learn
            return r + (timeout - left)
        return self._wait_on(timeout, left, r)

    def _wait_on(self, timeout: float, left: float, r: tuple[int, int, int] | int | float) -> float:
        """:meth:`wait` after its first native call returned ``r`` (a wait of ``left`` seconds):
        learn from it, and wait on until a handler ran or ``timeout`` passed."""
        spent = 0.0
        while True:
            if type(r) is tuple:
                ran, segment_id, waited = r
                spent += waited * 1e-9
                self.waited(waited)
                if ran or segment_id == _NUDGE:  # a nudge ends the wait early
                    return timeout - spent if spent < timeout else 0.0
            elif r == _STALLED:
                spent += 0.01
                self.fifo.retire_stalled()
            else:
                spent += left
                if spent >= timeout:
                    return 0.0
            left = timeout - spent if timeout - spent < 3600.0 else 3600.0
            if _config.SETTINGS is not self._settings:
                self._adopt(_config.SETTINGS)
            r = _wait_dispatch(self._fifo_map, self._table, self._spin_ns, left, self._may_sleep)

    def dispatch_before(self, deadline: float, clock: Callable[[], float]) -> tuple[bool, float]:
        """One step of a wait until ``deadline`` on ``clock``: run the pending handlers. ``(True, time
        left or 0.0)`` when the wait is over (a handler ran, or the deadline passed), else ``(False,
        time left)``."""
        if self.dispatch_pending():
            return True, max(deadline - clock(), 0.0)
        left = deadline - clock()
        return (True, 0.0) if left <= 0 else (False, left)

    def _wait_kernel(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            over, left = self.dispatch_before(deadline, time.monotonic)
            if over:
                return left
            item = self.fifo.pop_wait(min(left, 3600.0))
            if item and self._dispatch(*item):
                return max(deadline - time.monotonic(), 0.0)

    def nudge(self) -> None:
        """Make a waiting ``wait_once`` return (used to stop dispatcher threads)."""
        from ombm.core.delivery import fifo_ref

        self._check_open()
        ref = fifo_ref(self.fifo.token)
        if ref is None:
            return
        if ref.kernel:
            ref.send_kernel(L.NUDGE_SEGMENT, 0)
        elif _native.fanout((ref.fifo_map,), L.NUDGE_SEGMENT, 0) >> 16:
            ref.ring()

    def close(self) -> None:
        """Idempotent: disable every handler, remove the FIFO."""
        with self._lock:
            handles = [e[4] for entries in self._table.values() for e in entries]
        for h in handles:
            h.disable()
        self.fifo.close()

    @property
    def closed(self) -> bool:
        return self.fifo.closed

    def __del__(self) -> None:
        """Dropped unclosed: warn (``ResourceWarning``, as for an unclosed file) and close; never raises."""
        def still_open() -> bool:
            fifo = self.__dict__.get("fifo")
            return not (fifo is None or fifo._closed or self._forked or fifo.owner_pid != os.getpid())

        lifecycle.finalize_unclosed(self, still_open, self.close)

    def __repr__(self) -> str:
        fifo = self.__dict__.get("fifo")
        token = f"{fifo.token:016x}" if fifo is not None else "?"
        state = " forked" if self._forked else (" closed" if fifo is None or fifo._closed else "")
        return f"<ombm.Receiver fifo-{token}{state}>"


# ---- per-thread receivers
_local = threading.local()
_all_receivers: weakref.WeakSet[Receiver] = weakref.WeakSet()
_all_lock = threading.Lock()


class _ThreadReceiver:
    """Holds a thread's receiver; closes it when the thread's locals are cleared."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self.pid = os.getpid()

    def __del__(self) -> None:
        if self.pid != os.getpid():
            return  # inherited through fork: the parent still owns it
        self.receiver.close()


def current_receiver() -> Receiver:
    """The calling thread's receiver (created on first use, and again if it was closed)."""
    try:
        receiver: Receiver = _local.receiver
        if not receiver.fifo._closed:
            return receiver
    except AttributeError:
        pass
    holder = _ThreadReceiver()
    _local.holder = holder
    _local.receiver = holder.receiver
    return holder.receiver


def signal_handler(address: int, size: int, fn: Callable[[int], object]) -> SignalHandle:
    """Enable ``fn(address)`` for signals on ``[address, address+size)``; runs in this thread."""
    _resolve(address, size, fn)  # bad arguments change nothing (no FIFO is created)
    return current_receiver().add_handler(address, size, fn)


def signal(address: int) -> None:
    """``Signal(vaddr)``: signal every receiver watching the location of ``address``."""
    region = find_region(address)
    region.segment._router.deliver(address - region.address)


def sig_wait(timeout: float | None = None) -> float:
    """``SigWait(t)``: run pending handlers of this thread, waiting up to ``timeout`` seconds."""
    timeout = _check_timeout(timeout)  # before the receiver exists: bad input creates nothing
    return current_receiver().wait(timeout)


class Dispatcher:
    """A thread, owned by this object, that runs its handlers as asynchronous calls.

    Handler exceptions are passed to ``on_error`` (default: logged) and the
    thread goes on.  The thread never dies silently: an exception ``on_error``
    itself raises (or a handler's ``SystemExit``) is reported through
    :func:`sys.unraisablehook` (Python prints it by default) and the thread goes
    on serving.  ``close()`` stops and joins the thread and disables the handlers.
    """

    _forked = False  # set in a forked child: the dispatcher (and its thread) is the parent's

    def __init__(self, *, on_error: Callable[[BaseException], object] | None = None, name: str = "ombm-dispatcher"):
        self.receiver = Receiver()
        self._on_error = on_error or (lambda e: _log.error("ombm signal handler raised", exc_info=e))
        self._stop = False
        # the thread holds this object only weakly while it waits, so a dispatcher dropped unclosed
        # is collected: its finalizer warns and stops the thread
        self._thread = threading.Thread(target=_dispatch_loop, args=(weakref.ref(self), self.receiver),
                                        name=name, daemon=True)
        _all_dispatchers.add(self)
        self._thread.start()

    def signal_handler(self, address: int, size: int, fn: Callable[[int], object]) -> SignalHandle:
        """Run ``fn(address)`` in this dispatcher's thread for signals on ``[address, address+size)``;
        :class:`~ombm.ClosedError` once the dispatcher is closed."""
        if self._stop:
            if self._forked:
                raise ForkedError("this dispatcher belongs to the process that forked this one: make a new one here")
            raise ClosedError("dispatcher is closed")
        return self.receiver.add_handler(address, size, fn)

    def _turn(self) -> None:
        """One wait of the dispatcher's thread (the receiver's handlers run in it)."""
        try:
            self.receiver.wait_once(0.5)
        except Exception as e:  # a handler's error must not kill the dispatcher
            COUNTERS.handler_errors += 1
            try:
                self._on_error(e)
            except BaseException as report:  # nor its on_error's: reported, never silent
                _unraisable(report, f"Exception ignored in the on_error of {self!r}, while handling "
                                    f"{type(e).__name__}: {e}")
        except BaseException as e:  # SystemExit from a handler would end the thread silently
            COUNTERS.handler_errors += 1
            _unraisable(e, f"Exception ignored in a signal handler of {self!r}")

    def __del__(self) -> None:
        """Dropped unclosed: warn (``ResourceWarning``) and stop the thread (which then ends by itself);
        never raises."""
        try:
            if self.__dict__.get("_stop", True) or self._forked:
                return
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
            self._stop = True
            self.receiver.close()  # the thread sees its dispatcher gone at its next turn and ends
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<ombm.Dispatcher {self._thread.name!r}{' closed' if self._stop else ''}>"

    def close(self, timeout: float = 5.0) -> None:
        if self._stop:
            return
        self._stop = True
        self.receiver.nudge()
        self._thread.join(timeout)
        self.receiver.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dispatch_loop(ref: weakref.ReferenceType[Dispatcher], receiver: Receiver) -> None:
    """A dispatcher's thread: turns while its dispatcher lives and is not stopped."""
    while True:
        dispatcher = ref()
        if dispatcher is None or dispatcher._stop or receiver.fifo._closed:
            return
        dispatcher._turn()
        del dispatcher


_all_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


class _Unraisable:
    """The argument :func:`sys.unraisablehook` takes (``sys.UnraisableHookArgs`` has no public constructor)."""

    __slots__ = ("exc_type", "exc_value", "exc_traceback", "err_msg", "object")

    def __init__(self, exc: BaseException, err_msg: str) -> None:
        self.exc_type, self.exc_value, self.exc_traceback = type(exc), exc, exc.__traceback__
        self.err_msg, self.object = err_msg, None


def _unraisable(exc: BaseException, err_msg: str) -> None:
    """Report an exception nobody can take (the way CPython reports one in a finalizer)."""
    try:
        sys.unraisablehook(cast("sys.UnraisableHookArgs", _Unraisable(exc, err_msg)))
    except BaseException:  # a broken hook: the log is the last resort
        _log.error(err_msg, exc_info=exc)


def _close_receivers() -> None:
    with _all_lock:
        receivers = list(_all_receivers)
        _all_receivers.clear()
    for r in receivers:
        r.close()


def _after_fork_in_child() -> None:
    """A forked child owns none of its parent's receivers: start afresh (never close them).

    Each inherited receiver (and dispatcher) is marked as the parent's: in the child every use
    raises :class:`~ombm.ForkedError`, and ``close()`` leaves the parent's FIFO, directory
    entries and socket alone (nothing shared is touched, nothing unlinked)."""
    global _local
    _local = threading.local()
    with _all_lock:
        for receiver in list(_all_receivers):
            receiver._forked = True
            receiver.fifo._closed = True  # close() of the child's copy then does nothing
        _all_receivers.clear()
    for dispatcher in list(_all_dispatchers):
        dispatcher._forked = True
        dispatcher._stop = True  # its thread did not survive the fork
    _all_dispatchers.clear()


lifecycle.on_exit(_close_receivers)
os.register_at_fork(after_in_child=_after_fork_in_child)
