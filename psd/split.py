"""Cut a write unit whose script call would block Redis too long into calls that fit.  Pure.

The cut is by the cost model of :meth:`psd.coalesce.Batch.cost_us`, item by
item in the unit's order, so the same unit is always cut the same way (an NSQ
redelivery finds the same pieces).  A part with an idempotency key that is
cut gets one key per piece, ``{key}#{n}``: each piece is applied at most once
on its own, so a redelivered message applies only the pieces that had failed.
"""

from __future__ import annotations

from psd.coalesce import US_PER_HASH, US_PER_INCREMENT, US_PER_KEY, Batch
from psd.keys import Layout
from psd.model import Count, Part, Point, WriteUnit

#: The most one item can cost: a point in a series of its own (5 levels x its atid and 0),
#: or a set-total point, each hash new, plus its own idempotency key.
WORST_US_PER_ITEM = 10 * (US_PER_INCREMENT + US_PER_HASH) + US_PER_KEY


def split_unit(unit: WriteUnit, layout: Layout, budget_us: float) -> list[WriteUnit]:
    """The unit as consecutive pieces whose calls each cost at most ``budget_us`` (one item always goes).

    A unit that fits comes back whole, as ``[unit]``.
    """
    chunks: list[dict] = []  # per piece: part index -> its items in that piece
    current: dict = {}
    trial = Batch(layout, 1)
    keys = 0
    for part_index, part in enumerate(unit.parts):
        for item in part.points + part.counts:
            new_key = part.dedupe_key is not None and part_index not in current
            trial.add(_alone(item))
            if current and trial.cost_us() + US_PER_KEY * (keys + new_key) > budget_us:
                chunks.append(current)
                current, trial, keys = {}, Batch(layout, 1), 0
                trial.add(_alone(item))
                new_key = part.dedupe_key is not None
            keys += new_key
            current.setdefault(part_index, []).append(item)
    chunks.append(current)
    if len(chunks) == 1:
        return [unit]
    pieces_of = {}  # part index -> how many pieces it was cut into
    for chunk in chunks:
        for part_index in chunk:
            pieces_of[part_index] = pieces_of.get(part_index, 0) + 1
    seen_pieces: dict = {}
    units = []
    for chunk in chunks:
        parts = []
        for part_index, items in chunk.items():
            part = unit.parts[part_index]
            key = part.dedupe_key
            if key is not None and pieces_of[part_index] > 1:
                number = seen_pieces[part_index] = seen_pieces.get(part_index, -1) + 1
                key = f"{key}#{number}"
            parts.append(Part(key, tuple(i for i in items if type(i) is Point),
                              tuple(i for i in items if type(i) is Count), part.digest))
        units.append(WriteUnit(tuple(parts)))
    return units


def _alone(item) -> WriteUnit:
    return WriteUnit((Part(None, (item,), ()) if type(item) is Point else Part(None, (), (item,)),))
