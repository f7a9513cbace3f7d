"""Leaderboards: rank users by their sums, and by their sums as they stood at an earlier time.

A bracket is just the list of uids given; psd keeps no board state.  Pure
code, no I/O: the sums come from the reader.
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple, Optional


class Standing(NamedTuple):
    rank: int
    uid: int
    value: int


def standings(values: dict[int, int]) -> list[Standing]:
    """Best first, ties ordered by uid, standard competition ranking (1, 2, 2, 4)."""
    ordered = sorted(values.items())  # by uid, then (stable, also reversed) by value, best first
    ordered.sort(key=itemgetter(1), reverse=True)
    result, rank, previous = [], 0, None
    for position, (uid, value) in enumerate(ordered, 1):
        if value != previous:
            rank, previous = position, value
        result.append(Standing(rank, uid, value))
    return result


def board(values: dict[int, int], previous: Optional[dict[int, int]] = None, limit: Optional[int] = None) -> dict:
    """The JSON answer: the top ``limit`` entries, each with its earlier rank and value if asked."""
    earlier = {s.uid: s for s in standings(previous)} if previous is not None else None
    entries = []
    for standing in standings(values)[:limit]:
        entry = {"rank": standing.rank, "uid": str(standing.uid), "value": standing.value}
        if earlier is not None:
            then = earlier[standing.uid]
            entry["previous_rank"], entry["previous_value"] = then.rank, then.value
        entries.append(entry)
    return {"entries": entries, "total": len(values)}
