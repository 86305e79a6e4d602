"""The path state machine of the bridge (``ombm.net.path``): keepalives and the path MTU search,
driven by a fake clock and a fake network (which sizes cross)."""

from __future__ import annotations

from ombm.net.path import BASE_MTU, KEEPALIVE_PERIODS, PROBE_GAP_S, PROBE_TRIES, RAISE_S, SEARCH_STEP, Path


def probe_bytes(nonce: int, size: int) -> bytes:
    return bytes(size)


def search(path: Path, crosses, now: float = 0.0, steps: int = 200) -> float:
    """Run the search: each probe that ``crosses(size)`` is answered at once; returns the clock."""
    for _ in range(steps):
        data = path.probe_due(now, probe_bytes)
        if data is not None and crosses(len(data)):
            assert path.probed(path.probe_nonce, now)
        if not path.probe_size and path.probe_at_s > now + RAISE_S / 2:
            return now
        now += PROBE_GAP_S
    raise AssertionError("the search did not end")


def test_keepalive_pings_once_per_quiet_period_and_dies_after_three():
    path = Path(limit=1472, keepalive_s=1.0, heard_s=0.0)
    assert not path.ping_due(0.5) and not path.dead(0.5)
    assert path.ping_due(1.0) and not path.ping_due(1.5)
    assert path.ping_due(2.0)
    path.heard(2.5)
    assert not path.ping_due(3.0) and not path.dead(2.5 + KEEPALIVE_PERIODS - 0.01)
    assert path.dead(2.5 + KEEPALIVE_PERIODS)


def test_a_path_starts_at_the_base_and_confirms_the_limit_in_one_probe():
    path = Path(limit=1472, keepalive_s=1.0, heard_s=0.0)
    assert path.mtu == BASE_MTU
    first = path.probe_due(0.0, probe_bytes)
    assert first is not None and len(first) == 1472
    assert not path.probed(path.probe_nonce + 1, 0.0)  # another probe's answer
    assert path.probed(path.probe_nonce, 0.0) and path.mtu == 1472
    assert path.probe_due(1.0, probe_bytes) is None  # done until the raise timer


def test_a_black_hole_is_found_by_probes_that_go_unanswered():
    path = Path(limit=1472, keepalive_s=1.0, heard_s=0.0)
    search(path, lambda size: size <= 1252)
    assert 1252 - SEARCH_STEP <= path.mtu <= 1252 and path.too_big > 1252


def test_the_kernels_word_caps_the_search_and_lowers_a_confirmed_size():
    path = Path(limit=1472, keepalive_s=1.0, heard_s=0.0)
    path.kernel_says(1252, 0.0)
    data = path.probe_due(0.0, probe_bytes)
    assert data is not None and len(data) == 1252  # the largest the kernel allows, first
    assert path.probed(path.probe_nonce, 0.0) and path.mtu == 1252
    path.kernel_says(1000, 1.0)  # an ICMP taught it less
    assert path.mtu == 1000 and path.probe_due(2.0, probe_bytes) is None


def test_a_size_the_kernel_refuses_is_too_big_at_once():
    path = Path(limit=9000, keepalive_s=1.0, heard_s=0.0)
    data = path.probe_due(0.0, probe_bytes)
    assert data is not None and len(data) == 9000
    path.refused(0.0)
    assert path.too_big == 9000 and path.probe_size == (BASE_MTU + 9000) // 2


def test_each_size_gets_its_tries_then_the_search_goes_on_and_later_starts_again():
    path = Path(limit=1472, keepalive_s=1.0, heard_s=0.0)
    sizes = []
    now = 0.0
    for _ in range(PROBE_TRIES + 1):
        data = path.probe_due(now, probe_bytes)
        assert data is not None
        sizes.append(len(data))
        now += PROBE_GAP_S
    assert sizes == [1472] * PROBE_TRIES + [(BASE_MTU + 1472) // 2]
    end = search(path, lambda size: True, now)
    assert path.mtu >= 1472 - SEARCH_STEP
    data = path.probe_due(end + RAISE_S + 1, probe_bytes)  # the raise timer: from the limit again
    assert data is not None and len(data) == 1472


def test_a_limit_below_the_base_needs_no_probe():
    path = Path(limit=600, keepalive_s=1.0, heard_s=0.0)
    assert path.mtu == 600 and path.probe_due(0.0, probe_bytes) is None
