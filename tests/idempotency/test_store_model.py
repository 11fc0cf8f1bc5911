"""Property: the stores agree with a ten-line model of the contract, step by step.

Hypothesis drives random sequences of claims, completions, releases, lease extensions and
clock jumps against the memory and SQLite stores (on virtual time) and checks every answer
against the model below.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stoic import clock
from stoic.idempotency import ClaimStatus, MemoryStore, SQLiteStore, Store
from stoic.testing import virtual_time

KEYS = st.sampled_from(["a", "b"])
FPS = st.sampled_from(["f1", "f2"])
LEASE, TTL = 10.0, 30.0


@dataclass
class Row:
    fingerprint: str
    done: bool
    token: str
    lease_until: float
    expires_at: float


class StoreModel(RuleBasedStateMachine):
    make_store: staticmethod  # set by subclasses

    def __init__(self) -> None:
        super().__init__()
        self.time = virtual_time()
        self.clock = self.time.__enter__()
        self.store: Store = self.make_store()
        self.model: dict[str, Row] = {}
        self.tokens: dict[str, str] = {}

    def teardown(self) -> None:
        self.store.close()
        self.time.__exit__(None, None, None)

    def _live(self, key: str) -> Row | None:
        row = self.model.get(key)
        now = clock.wall()
        if row is None or row.expires_at <= now or (not row.done and row.lease_until <= now):
            return None
        return row

    @rule(key=KEYS, fp=FPS)
    def claim(self, key: str, fp: str) -> None:
        claim = self.store.claim(key, fp, lease=LEASE, ttl=TTL)
        row = self._live(key)
        now = clock.wall()
        if row is None:
            assert claim.status is ClaimStatus.CLAIMED
            self.model[key] = Row(fp, False, claim.token or "", now + LEASE, now + TTL)
            self.tokens[key] = claim.token or ""
        elif row.fingerprint != fp:
            assert claim.status is ClaimStatus.MISMATCH
        else:
            assert claim.status is (ClaimStatus.COMPLETED if row.done else ClaimStatus.IN_FLIGHT)

    def _owned(self, key: str, token: str) -> Row | None:
        """The row ``token`` may complete, release or extend: its own, in flight, unexpired."""
        row = self.model.get(key)
        if row is None or row.done or row.token != token or row.expires_at <= clock.wall():
            return None
        return row

    @precondition(lambda self: bool(self.tokens))
    @rule(key=KEYS)
    def complete(self, key: str) -> None:
        token = self.tokens.get(key, "nobody")
        row = self._owned(key, token)
        assert self.store.complete(key, token, f"done-{key}", ttl=TTL) == (row is not None)
        if row is not None:
            row.done, row.expires_at = True, clock.wall() + TTL

    @precondition(lambda self: bool(self.tokens))
    @rule(key=KEYS)
    def release(self, key: str) -> None:
        token = self.tokens.get(key, "nobody")
        row = self._owned(key, token)
        assert self.store.release(key, token) == (row is not None)
        if row is not None:
            del self.model[key]

    @precondition(lambda self: bool(self.tokens))
    @rule(key=KEYS)
    def extend(self, key: str) -> None:
        token = self.tokens.get(key, "nobody")
        row = self._owned(key, token)
        assert self.store.extend(key, token, LEASE) == (row is not None)
        if row is not None:
            row.lease_until = clock.wall() + LEASE
            row.expires_at = max(row.expires_at, row.lease_until)

    @rule(seconds=st.sampled_from([1.0, 5.0, 9.5, 10.5, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def get_agrees(self) -> None:
        for key in ("a", "b"):
            record = self.store.get(key)
            row = self.model.get(key)
            if row is None or row.expires_at <= clock.wall():
                assert record is None
            else:
                assert record is not None
                assert record.completed == row.done


class MemoryStoreModel(StoreModel):
    make_store = staticmethod(MemoryStore)


class SQLiteStoreModel(StoreModel):
    make_store = staticmethod(lambda: SQLiteStore(Path(tempfile.mkdtemp()) / "m.db"))


TestMemoryStoreAgreesWithTheModel = MemoryStoreModel.TestCase
TestMemoryStoreAgreesWithTheModel.settings = settings(max_examples=60, deadline=None)
TestSQLiteStoreAgreesWithTheModel = SQLiteStoreModel.TestCase
TestSQLiteStoreAgreesWithTheModel.settings = settings(max_examples=40, deadline=None)
