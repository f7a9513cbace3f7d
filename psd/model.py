"""The validated values that travel from the inputs (HTTP, NSQ) to the writer."""

from __future__ import annotations

from typing import NamedTuple, Optional


class Point(NamedTuple):
    """One metric sample of one user.

    A plain point adds ``value`` at ``ts``.  A set-total point (``total`` is
    not None, ``aid`` names one activity) says "the activity's total is now
    ``total``": the store writes the difference to the last total it saw.
    """

    uid: int
    atid: int
    metric: str
    value: int
    ts: int
    aid: Optional[int] = None
    total: Optional[int] = None


class Count(NamedTuple):
    """One increment of a global counter (no user): ``c:{name}:{bucket}``."""

    name: str
    value: int
    ts: int


class WriteUnit(NamedTuple):
    """What is applied all together or not at all, and at most once per key.

    ``dedupe_key`` is None (no idempotency) or a string that names the unit
    for the dedupe window: an HTTP point id, an ``Idempotency-Key`` header, an
    NSQ message id.
    """

    dedupe_key: Optional[str]
    points: tuple = ()
    counts: tuple = ()

    def size(self) -> int:
        return len(self.points) + len(self.counts)


class UnitResult(NamedTuple):
    """What became of one unit: applied, or skipped as an already-seen key."""

    written: int
    duplicate: bool
