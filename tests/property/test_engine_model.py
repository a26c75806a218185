"""The engine against the reference (tests/property/reference.py), command by command.

Two drivers over one generator (workload.py):

- a hypothesis state machine: each rule is one kind of command; after every step the
  events must be identical (rejection texts aside) and ``Pair.check`` must hold: the
  engine's own ``_check()``, an uncrossed book equal to the reference's order by order,
  ledger balances and holds equal to the reference's (holds there are computed from the
  open orders), conserved totals per asset, the same day statistics, and an event
  stream that ``OrderTracker`` accepts with the same live orders as the book. It draws
  from a fixed seed (printed; set ETX_HYPOTHESIS_SEED to try another) and without the
  example database, so every run tries the same examples;
- a long seeded random run (the seed is printed; set ETX_SEED to replay another) that
  also feeds the engine batches stamped by ``Sequencer.stamp_batch`` through
  ``apply_batch``.

The ``slow`` variant runs the state machine with many more examples.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from engine import Command, EndOfDay, Tick
from tests.property.workload import DataChooser, Pair, RandomChooser, Workload, make_config

HYPOTHESIS_SEED = int(os.environ.get("ETX_HYPOTHESIS_SEED", "20240702"))


@seed(HYPOTHESIS_SEED)
class EngineMatchesReference(RuleBasedStateMachine):
    pair: Pair
    work: Workload

    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        config = make_config(DataChooser(data))
        note(repr(config))
        self.pair = Pair(config)
        self.work = Workload(self.pair)
        self.run(Tick())

    def run(self, cmd: Command) -> None:
        events = self.pair.step([cmd])
        note(f"{cmd!r} -> {events!r}")

    @rule(data=st.data())
    def new_order(self, data: st.DataObject) -> None:
        self.run(self.work.new_order(DataChooser(data)))

    @rule(data=st.data())
    def new_order_again(self, data: st.DataObject) -> None:
        self.run(self.work.new_order(DataChooser(data)))

    @rule(data=st.data())
    def new_order_once_more(self, data: st.DataObject) -> None:
        self.run(self.work.new_order(DataChooser(data)))

    @rule(data=st.data())
    def ladder(self, data: st.DataObject) -> None:
        for cmd in self.work.ladder(DataChooser(data)):
            self.run(cmd)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.run(self.work.cancel(DataChooser(data)))

    @rule(data=st.data())
    def amend(self, data: st.DataObject) -> None:
        self.run(self.work.amend(DataChooser(data)))

    @rule(data=st.data())
    def amend_again(self, data: st.DataObject) -> None:
        self.run(self.work.amend(DataChooser(data)))

    @rule(data=st.data())
    def hit_order(self, data: st.DataObject) -> None:
        self.run(self.work.hit(DataChooser(data)))

    @rule(data=st.data())
    def mass_cancel(self, data: st.DataObject) -> None:
        self.run(self.work.mass_cancel(DataChooser(data)))

    @rule(data=st.data())
    def halt(self, data: st.DataObject) -> None:
        self.run(self.work.halt(DataChooser(data)))

    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        self.run(self.work.resume(DataChooser(data)))

    @rule(data=st.data())
    def suspend(self, data: st.DataObject) -> None:
        self.run(self.work.suspend(DataChooser(data)))

    @rule(data=st.data())
    def reinstate(self, data: st.DataObject) -> None:
        self.run(self.work.reinstate(DataChooser(data)))

    @rule(data=st.data())
    def note(self, data: st.DataObject) -> None:
        self.run(self.work.note(DataChooser(data)))

    @rule()
    def end_of_day(self) -> None:
        self.run(EndOfDay())

    @rule(data=st.data())
    def time_passes(self, data: st.DataObject) -> None:
        self.work.advance(DataChooser(data))
        self.run(Tick())

    @invariant()
    def consistent(self) -> None:
        if hasattr(self, "pair"):
            self.pair.check()


def machine_settings(examples: int, steps: int) -> settings:
    # No example database: a failure stored by an earlier run would be tried first, and
    # the examples would differ from run to run (the seed alone picks them).
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def test_engine_matches_reference() -> None:
    print(f"hypothesis seed={HYPOTHESIS_SEED} (replay another with ETX_HYPOTHESIS_SEED=...)")
    run_state_machine_as_test(EngineMatchesReference, settings=machine_settings(120, 60))


@pytest.mark.slow
def test_engine_matches_reference_long() -> None:
    print(f"hypothesis seed={HYPOTHESIS_SEED} (replay another with ETX_HYPOTHESIS_SEED=...)")
    run_state_machine_as_test(EngineMatchesReference, settings=machine_settings(600, 100))


SEEDS = [int(s) for s in os.environ.get("ETX_SEED", "20240701,17").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_commands_against_reference(seed: int) -> None:
    print(f"seed={seed} (replay with ETX_SEED={seed})")
    c = RandomChooser(seed)
    pair = Pair(make_config(c))
    print(pair.config)
    work = Workload(pair)
    pair.step([Tick()])
    while pair.steps < 20_000:
        if c.chance(0.1):
            work.advance(c)
        before = pair.steps
        if c.chance(0.2):
            # A batch, as the gateway hands them over: one timestamp, one apply_batch.
            pair.step([work.any(c) for _ in range(c.integer(1, 8))], batch=True)
        else:
            pair.step([work.any(c)])
        if pair.steps // 100 != before // 100:
            pair.check()
    pair.check()
