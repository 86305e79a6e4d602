"""The machine's structure and timed primitives: FIFOs, directories, buses and links (§3.1.2, Fig. 3-4)."""

from dataclasses import replace

import pytest

from ombm.sim.machine import Entry, Machine, Mode, SignalFifo
from ombm.sim.memory import Memory
from ombm.sim.params import FUTURE

import simpy


def run(machine: Machine, *processes) -> float:
    for process in processes:
        machine.env.process(process)
    machine.env.run()
    return machine.env.now


def test_fifo_keeps_order_and_drops_when_full():
    fifo = SignalFifo(simpy.Environment(), capacity=2)
    assert [fifo.push(a) for a in (10, 11, 12)] == [True, True, False]
    assert (fifo.delivered, fifo.dropped) == (2, 1)
    assert [fifo.get().value for _ in range(2)] == [10, 11]


def test_fifo_hands_a_signal_to_a_waiting_processor():
    env = simpy.Environment()
    fifo = SignalFifo(env, capacity=1)
    event = fifo.get()
    assert fifo.push(7) and fifo.push(8)   # the waiter takes 7; 8 fills the one entry
    assert event.value == 7 and not fifo.push(9)


def test_geometry_levels():
    machine = Machine(FUTURE, 64)          # 4 per board, 4 boards per cluster
    assert machine.level(0, 3) == 2
    assert machine.level(0, 4) == 3
    assert machine.level(0, 16) == 4
    assert machine.level(0, 48) == 6
    assert machine.level(48, 0) == 6


@pytest.mark.parametrize("q, expected", [(1, 0.0), (4, 3.36), (16, 6.1 + 3.36), (48, 3 * 6.1 + 3.36)])
def test_a_line_crossing_the_lower_levels(q, expected):
    machine = Machine(FUTURE, 64)
    assert run(machine, machine.cross(0, q, "data")) == pytest.approx(expected)


def test_address_packets_cost_a_fraction_of_a_line():
    machine = Machine(replace(FUTURE, lower_address_fraction=0.5), 64)
    assert run(machine, machine.cross(0, 48, "address")) == pytest.approx(0.5 * (3 * 6.1 + 3.36))


def test_bus_contention_serializes_transactions():
    machine = Machine(FUTURE, 8)
    same_board = run(machine, machine.bus(0, "data"), machine.bus(1, "data"))
    assert same_board == pytest.approx(2 * 1.12)
    machine = Machine(FUTURE, 8)
    other_boards = run(machine, machine.bus(0, "data"), machine.bus(4, "data"))
    assert other_boards == pytest.approx(1.12)
    assert machine.counts["L2 bus", "data"] == 2


def test_directory_records_copies_with_p_bits_and_g_bit():
    machine = Machine(FUTURE, 32)
    memory = Memory(machine)
    line = machine.new_line()
    memory.set_holders(line, {0: Mode.SHARED, 1: Mode.SHARED, 20: Mode.SHARED})
    assert machine.l2_dir[0][line] == Entry(Mode.SHARED, frozenset({0, 1}), True)
    assert machine.l3_dir[1][line].p_bits == frozenset({5})
    assert machine.memory_dir[line].p_bits == frozenset({0, 1})
    assert memory.holders(line) == {0: Mode.SHARED, 1: Mode.SHARED, 20: Mode.SHARED}
    run(machine, memory.write(1, line))
    assert memory.holders(line) == {1: Mode.PRIVATE}
    assert machine.l2_dir[5][line].mode is Mode.INVALID


def test_write_invalidate_costs_by_hand():
    machine = Machine(FUTURE, 8)
    memory = Memory(machine)
    line = machine.new_line()
    memory.set_holders(line, {0: Mode.SHARED, 1: Mode.SHARED})
    assert run(machine, memory.write(0, line)) == pytest.approx(1.12)      # one invalidation
    t = run(machine, memory.read(1, line)) - 1.12
    assert t == pytest.approx(3 * 1.12)                                     # request, write-back, fill


def test_message_mode_entries_route_signals_through_the_g_bit():
    machine = Machine(FUTURE, 32)
    memory = Memory(machine)
    line = machine.new_line()
    memory.bind(line, 0, frozenset({1, 5, 20}), signalling=True)
    assert machine.l2_dir[0][line] == Entry(Mode.MESSAGE_SIGNAL, frozenset({1}), True)
    assert memory.targets(0, line) == {0: frozenset({1}), 1: frozenset({5}), 5: frozenset({20})}
    run(machine, memory.deliver(0, line, data=True, signal=True, explicit=False))
    assert [machine.processors[q].fifo.entries[0] for q in (1, 5, 20)] == [line] * 3
