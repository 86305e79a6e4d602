"""The paper's trends as properties over the parameter space (§2, §3.1.2, §6)."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ombm.sim import explore
from ombm.sim.mbm import OPTIMIZED, SOFTWARE
from ombm.sim.params import FUTURE
from ombm.sim.scenarios import transfer


def speedup(params, level):
    return transfer(params, SOFTWARE, level)[0] / transfer(params, OPTIMIZED, level)[0]


@st.composite
def machines(draw):
    """§6-style machines: any processor speed, lower levels no faster than the ones above,
    and the protocol constants around their calibrated values."""
    l2 = draw(st.floats(0.05, 3.0))
    l3 = l2 * draw(st.floats(1.0, 10.0))
    hop = l3 * draw(st.floats(1.0, 10.0))
    return replace(
        FUTURE,
        cpu_speed=draw(st.sampled_from([0.25, 0.5, 1, 2, 4, 8, 16, 64, 1000])),
        l2_line_us=l2, l3_line_us=l3, hop_line_us=hop,
        lower_address_fraction=draw(st.floats(0.5, 1.0)),
        lock_bus_transactions=draw(st.integers(0, 4)),
    )


@settings(max_examples=25, deadline=None)
@given(machines())
def test_speedup_grows_with_levels_traversed(params):
    curve = [speedup(params, level) for level in range(2, 7)]
    assert all(b >= a - 1e-9 for a, b in zip(curve, curve[1:]))


@settings(max_examples=25, deadline=None)
@given(machines(), st.integers(2, 6), st.floats(1.0, 16.0))
def test_speedup_grows_with_processor_speed(params, level, factor):
    faster = replace(params, cpu_speed=params.cpu_speed * factor)
    assert speedup(faster, level) >= speedup(params, level) - 1e-9


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(explore.SHIPPING_N), st.sampled_from(explore.SHIPPING_N))
def test_more_processors_make_the_shared_queue_worse(a, b):
    small, large = sorted((a, b))
    assert (explore.shipping(large, "data")["mean_latency_us"]
            >= explore.shipping(small, "data")["mean_latency_us"])


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 48), st.integers(1, 64), st.integers(1, 64), st.integers(0, 10_000))
def test_fifo_loss_never_grows_with_fifo_size(burst, size_a, size_b, seed):
    small, large = sorted((size_a, size_b))
    kwargs = dict(senders=3, bursts_each=2, mean_gap_us=300.0, seed=seed)
    assert explore.fifo_loss(burst, large, **kwargs)["dropped"] <= explore.fifo_loss(burst, small, **kwargs)["dropped"]


def test_function_shipping_moves_less_data_at_scale():
    data, function = explore.shipping(32, "data"), explore.shipping(32, "function")
    assert function["transactions_per_allocation"] < data["transactions_per_allocation"]
    assert function["throughput_per_ms"] > data["throughput_per_ms"]
