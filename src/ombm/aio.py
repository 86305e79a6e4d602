"""asyncio integration: await address-valued signals without a thread per channel.

A receiver that waits in an event loop announces it in its FIFO's sleep word
(``SLEEP_DOORBELL`` instead of the futex's ``SLEEP_FUTEX``) and lets the loop
watch its doorbell socket; a sender that finds the word set rings it with one
datagram (the same Drepper protocol as the futex path: announce, re-check,
sleep). On the software-only path the signals themselves arrive on that
socket. Handlers run in the event loop's thread.

    handle = ombm.signal_handler(region.address, region.size, on_message)
    await ombm.aio.sig_wait(1.0)
"""

from __future__ import annotations

import asyncio

from ombm import _layout as L
from ombm import _native
from ombm.core.signals import Receiver, _check_timeout, current_receiver


async def wait(receiver: Receiver, timeout: float | None = None) -> float:
    """Run ``receiver``'s handlers for pending signals, awaiting up to ``timeout`` for one.

    Returns the time left once a handler ran, or 0.0 after the timeout.
    """
    timeout = _check_timeout(timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sleep_word = receiver.fifo.address + L.FIFO_SLEEP
    while True:
        over, left = receiver.dispatch_before(deadline, loop.time)
        if over:
            return left
        fifo = receiver.fifo
        sock = fifo.doorbell()
        if not receiver.kernel:
            # Drepper's handshake with fifo_push, seq_cst on both sides (C11): announce (store32 is
            # a seq_cst store), then re-check the head cell (a seq_cst load of the word the push
            # publishes with a seq_cst CAS before its seq_cst load of the sleep word): of this
            # receiver and a push, at least one sees the other, so no signal goes unrung.
            _native.store32(sleep_word, L.SLEEP_DOORBELL)
            if fifo.ready():
                _native.store32(sleep_word, L.SLEEP_AWAKE)
                continue
            if fifo.depth():  # claimed, not published: poll every 10 ms, as the futex wait does
                left = min(left, 0.01)
        ready: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _set_once, ready)
        try:
            await asyncio.wait_for(ready, left)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(fd)
            if not receiver.kernel:
                _native.store32(sleep_word, L.SLEEP_AWAKE)
                fifo.drain_doorbell()
                if fifo.depth() and not fifo.ready():
                    fifo.retire_stalled()  # a producer killed mid-push (only a dead one's cell goes)


def _set_once(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def sig_wait(timeout: float | None = None) -> float:
    """``SigWait`` for coroutines: the event loop thread's receiver (see :func:`ombm.sig_wait`)."""
    timeout = _check_timeout(timeout)
    return await wait(current_receiver(), timeout)
