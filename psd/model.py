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


class Part(NamedTuple):
    """Points and counts that share one idempotency key (or none).

    ``dedupe_key`` is None or a string naming the part for the dedupe window:
    a point's ``id``, an ``Idempotency-Key`` header, an NSQ message id.  A
    part whose key was already applied is skipped whole.
    """

    dedupe_key: Optional[str]
    points: tuple = ()
    counts: tuple = ()

    def size(self) -> int:
        return len(self.points) + len(self.counts)


class WriteUnit(NamedTuple):
    """What one client sent at once (an HTTP request, an NSQ message).

    Its parts are applied in one Redis script, so all together or not at all;
    it is acknowledged as one.
    """

    parts: tuple

    def size(self) -> int:
        return sum([len(part.points) + len(part.counts) for part in self.parts])


class UnitResult(NamedTuple):
    """What became of one unit: items applied, items skipped as already seen."""

    written: int
    duplicates: int


def group_parts(keyed_items: list, unit_key: Optional[str] = None) -> tuple:
    """Split (id, Point|Count) pairs of one request into Parts.

    With a unit-wide key (an ``Idempotency-Key`` header, an NSQ message id)
    everything is one part under that key (callers namespace it: ``h:`` for
    HTTP, ``nsq:`` for NSQ).  Otherwise each item with its own id is a part
    of its own, keyed ``p:{id}`` whatever input it came through, and the
    items without an id share one part.
    """
    if unit_key is not None:
        return (_part(unit_key, [item for _, item in keyed_items]),)
    anonymous = [item for item_id, item in keyed_items if item_id is None]
    parts = [_part("p:" + item_id, [item]) for item_id, item in keyed_items if item_id is not None]
    if anonymous:
        parts.append(_part(None, anonymous))
    return tuple(parts)


def _part(dedupe_key: Optional[str], items: list) -> Part:
    points = tuple([item for item in items if type(item) is Point])
    counts = tuple([item for item in items if type(item) is Count]) if len(points) < len(items) else ()
    return Part(dedupe_key, points, counts)
