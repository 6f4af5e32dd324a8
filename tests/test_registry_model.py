"""Hypothesis: several Butlers with stale views, interleaved at random, behave like one serial registry.

The model is a dict from (type, run, data ID) to the first value put there. Every put must
succeed exactly when the model has no entry, conflict otherwise, and every fresh reader must
see exactly the model, on both commit protocols.
"""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from objbutler import Butler
from objbutler.errors import ConflictError
from objbutler.stores.memory import MemoryStore
from objbutler.testing.faults import IgnoresConditionsStore

SESSIONS = 3


class RegistryMachine(RuleBasedStateMachine):
    protocol = "sequenced"

    def __init__(self) -> None:
        super().__init__()
        self.name = f"model-{uuid.uuid4().hex}"
        if self.protocol == "sequenced":
            Butler.create(f"memory://{self.name}", checkpoint_interval=4)
            self.butlers = [Butler(f"memory://{self.name}") for _ in range(SESSIONS)]
        else:
            store = IgnoresConditionsStore(MemoryStore(self.name))
            Butler.create(f"memory://{self.name}", store=store, allow_no_atomic_create=True, checkpoint_interval=4)
            self.butlers = [Butler(f"memory://{self.name}", store=store) for _ in range(SESSIONS)]
            for butler in self.butlers:
                butler.registry.settle_seconds = 0.0
        self.model: dict[tuple[int, str], int] = {}
        self.counter = 0

    @rule(session=st.integers(0, SESSIONS - 1), visit=st.integers(0, 6), run=st.sampled_from(["a", "b"]))
    def put(self, session: int, visit: int, run: str) -> None:
        self.counter += 1
        key = (visit, run)
        try:
            self.butlers[session].put({"value": self.counter}, "metric", {"visit": visit}, run=run)
        except ConflictError:
            assert key in self.model, f"conflict on a free data ID {key}"
            return
        assert key not in self.model, f"second put of {key} succeeded"
        self.model[key] = self.counter

    @rule(session=st.integers(0, SESSIONS - 1))
    def refresh(self, session: int) -> None:
        self.butlers[session].registry.refresh()

    @invariant()
    def fresh_reader_sees_the_model(self) -> None:
        reader = Butler(f"memory://{self.name}", store=self.butlers[0].store)
        seen = {(r.data_id["visit"], r.run): reader.get(r)["value"] for r in reader.query()}
        assert seen == self.model


class TimestampedRegistryMachine(RegistryMachine):
    protocol = "timestamped"


TestSequencedRegistryModel = RegistryMachine.TestCase
TestSequencedRegistryModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestTimestampedRegistryModel = TimestampedRegistryMachine.TestCase
TestTimestampedRegistryModel.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
