"""The validated values that travel from the inputs (HTTP, NSQ) to the writer."""

from __future__ import annotations

import hashlib
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
    a point's ``id`` (scoped by :func:`group_parts`), an ``Idempotency-Key``
    header, an NSQ message id.  A part whose key was already applied is
    skipped whole.  ``digest`` (header keys only) names the request's content:
    the same key recorded with another digest is a conflict, not a duplicate.
    """

    dedupe_key: Optional[str]
    points: tuple = ()
    counts: tuple = ()
    digest: Optional[str] = None

    def size(self) -> int:
        return len(self.points) + len(self.counts)


class WriteUnit(NamedTuple):
    """What one client sent at once (an HTTP request, an NSQ message).

    Its parts are applied in one Redis script, so all together or not at all,
    unless that call would exceed ``[writer] max_script_ms``: then the writer
    applies it in pieces (see psd.split), or refuses it when ``atomic`` (an
    ``Idempotency-Key`` asked for all or nothing).  It is acknowledged as one.
    """

    parts: tuple
    atomic: bool = False

    def size(self) -> int:
        return sum([len(part.points) + len(part.counts) for part in self.parts])


class UnitResult(NamedTuple):
    """What became of one unit: items applied, items skipped as already seen."""

    written: int
    duplicates: int


def group_parts(keyed_items: list, unit_key: Optional[str] = None, digest: Optional[str] = None) -> tuple:
    """Split (id, Point|Count) pairs of one request into Parts.

    With a unit-wide key (an ``Idempotency-Key`` header, an NSQ message id)
    everything is one part under that key (callers namespace it: ``h:`` for
    HTTP, ``nsq:`` for NSQ), with the request's ``digest`` if given.
    Otherwise each item with its own id is a part of its own, keyed by
    :func:`item_key` whatever input it came through, and the items without
    an id share one part.
    """
    if unit_key is not None:
        return (_part(unit_key, [item for _, item in keyed_items], digest),)
    anonymous = [item for item_id, item in keyed_items if item_id is None]
    parts = [_part(item_key(item_id, item), [item]) for item_id, item in keyed_items if item_id is not None]
    if anonymous:
        parts.append(_part(None, anonymous))
    return tuple(parts)


def item_key(item_id: str, item) -> str:
    """A point's or a count's ``id`` scoped to what a true retry repeats.

    ``u:{uid}:{metric}:{id}`` for a point (so another user's, or another
    metric's, point with the same id is not a duplicate; the uid in the name
    keeps the record in the user's slot once keys are tagged for a cluster),
    ``c:{name}:{id}`` for a count: the kinds never share a key.  Metric and
    count names have no colon, so the id (which may) cannot make two scopes meet.
    """
    if type(item) is Point:
        return f"u:{item.uid}:{item.metric}:{item_id}"
    return f"c:{item.name}:{item_id}"


def content_digest(keyed_items: list) -> str:
    """A digest of a request's validated items, in order: what an ``Idempotency-Key`` is bound to.

    Taken after parsing, so JSON spacing, key order or number spelling do not
    change it; any change to an item (or to the items' order) does.
    """
    canonical = repr([(item_id, tuple(item), type(item).__name__) for item_id, item in keyed_items])
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _part(dedupe_key: Optional[str], items: list, digest: Optional[str] = None) -> Part:
    points = tuple([item for item in items if type(item) is Point])
    counts = tuple([item for item in items if type(item) is Count]) if len(points) < len(items) else ()
    return Part(dedupe_key, points, counts, digest)
