"""What a read costs Redis, worked out before any Redis call, and the ceiling per request.

The unit is one hash read: a range sum of a (user, type, metric) over a
window costs as many reads as its decomposition has (psd.buckets.decompose),
a series one HGETALL per distinct hash, an ``_atids`` lookup one set read per
user.  Redis spends ~2.8 us per hash read inside the read script (docs/queries.md),
so ``[query] max_reads_per_request`` bounds the Redis time one request can take.
Pure code, no I/O.
"""

from __future__ import annotations

import calendar
import time

from psd.errors import InvalidInput

#: ``[query] max_reads_per_request``: a 10,000-user board over 30 days with compare_to is ~140,000
#: reads; at ~2.8 us of Redis time per read this is at most ~0.6 s of Redis time per request.
DEFAULT_MAX_READS = 200000

#: The smallest value of each field of a time tuple (year, month, day, hour, minute, second).
_LOWEST = (None, 1, 1, 0, 0, 0)
_SECOND = 5  # index of the seconds in a time tuple: the fields of a minute hash


class QueryTooCostly(InvalidInput):
    """A 400: the request would read more hashes than one request may."""

    def __init__(self, cost: int, limit: int):
        super().__init__(f"this query needs {cost} hash reads, more than the {limit} allowed per request "
                         "([query] max_reads_per_request): ask for fewer users, metrics or buckets, or a shorter range")
        self.cost, self.limit = cost, limit


class ReadBudget:
    """The hash reads one request may still spend; charged before each round of Redis calls."""

    def __init__(self, limit: int):
        self.limit = limit
        self.spent = 0

    def charge(self, reads: int) -> None:
        """Count ``reads`` more, or refuse the request (nothing of this round was sent yet)."""
        self.spent += reads
        if self.spent > self.limit:
            raise QueryTooCostly(self.spent, self.limit)


def _fields(ts: int) -> tuple[tuple, tuple]:
    """The time tuple of ``ts`` (year .. second), and the highest value of each of its fields."""
    t = time.gmtime(ts)[:6]
    return t, (None, 12, calendar.monthrange(t[0], t[1])[1], 23, 59, 59)


def _starts(t, index: int) -> bool:
    """``t`` is the first second of the bucket its fields up to ``index`` name."""
    return t[0][index + 1:] == _LOWEST[index + 1:]


def _ends(t, index: int) -> bool:
    """``t`` is the last second of the bucket its fields up to ``index`` name."""
    return t[0][index + 1:] == t[1][index + 1:]


def _from(parent: int, t) -> int:
    """Reads that cover [t, end of t's bucket at level ``parent``] (the window's left edge)."""
    child = parent + 1
    if child == _SECOND or _starts(t, child):
        return 1
    return _from(child, t) + (t[0][child] != t[1][child])


def _until(parent: int, t) -> int:
    """Reads that cover [start of t's bucket at level ``parent``, t] (the window's right edge)."""
    child = parent + 1
    if child == _SECOND or _ends(t, child):
        return 1
    return _until(child, t) + (t[0][child] != _LOWEST[child])


def _within(parent: int, low, high) -> int:
    """Reads that cover [low, high], both inside one bucket at level ``parent``."""
    child = parent + 1
    if child == _SECOND:
        return 1
    low_partial, high_partial = not _starts(low, child), not _ends(high, child)
    if low[0][child] == high[0][child]:
        return _within(child, low, high) if low_partial or high_partial else 1
    first, last, reads = low[0][child], high[0][child], 0
    if low_partial:
        reads, first = reads + _from(child, low), first + 1
    if high_partial:
        reads, last = reads + _until(child, high), last - 1
    return reads + (first <= last)


def window_reads(start: int, end: int) -> int:
    """The hash reads of a range sum over [start, end]: ``len(decompose(start, end))``,
    in a few microseconds (the decomposition of a 272-year window takes 2 ms)."""
    low, high = _fields(start), _fields(end)
    if low[0][0] == high[0][0]:
        return 1 if _starts(low, 0) and _ends(high, 0) else _within(0, low, high)
    return ((1 if _starts(low, 0) else _from(0, low)) + (high[0][0] - low[0][0] - 1)
            + (1 if _ends(high, 0) else _until(0, high)))
