"""A brute-force model of series step buckets: scan the seconds, cut where the local label changes.

A clock step (second, minute, hour) is labelled by the local wall-clock value
truncated to the step *and* the offset in force, so the repeated hour of a
fall-back is a bucket of its own and the hour cut short by a spring-forward
of 30 minutes is 30 minutes long.  A calendar step (day, month, year) starts
the first time the local calendar reaches a new day, month or year.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

#: Seconds between two samples of a scan; a label never changes twice within one.
_SAMPLE = {"second": 1, "minute": 1, "hour": 60, "day": 600, "month": 3600, "year": 3600}


def label(ts: int, step: str, zone: ZoneInfo):
    local = datetime.fromtimestamp(ts, zone)
    if step == "day":
        return local.date()
    if step == "month":
        return local.year, local.month
    if step == "year":
        return local.year
    wall = {"second": local, "minute": local.replace(second=0), "hour": local.replace(minute=0, second=0)}[step]
    return wall.replace(tzinfo=None), local.utcoffset()


def model_buckets(start: int, end: int, step: str, zone: ZoneInfo) -> list[tuple[int, int]]:
    """(start, end) of each step bucket over [start, end], both inclusive, by scanning."""
    calendar = step in ("day", "month", "year")
    cuts, current = [start], label(start, step, zone)
    highest = current
    sample = _SAMPLE[step]
    ts = start
    while ts < end:
        ahead = min(end, ts + sample)
        if label(ahead, step, zone) != current:
            for second in range(ts + 1, ahead + 1):
                seen = label(second, step, zone)
                if seen != current:
                    current = seen
                    if not calendar:
                        cuts.append(second)
                    elif seen > highest:
                        highest = seen
                        cuts.append(second)
        ts = ahead
    return [(first, following - 1) for first, following in zip(cuts, cuts[1:] + [end + 1])]


def offset_changes(zone: ZoneInfo, start: int, end: int, sample: int = 900) -> list[int]:
    """The instants in [start, end] where the zone's offset changes (the first second after)."""
    changes, previous = [], datetime.fromtimestamp(start, zone).utcoffset()
    for ts in range(start + sample, end + sample, sample):
        offset = datetime.fromtimestamp(ts, zone).utcoffset()
        if offset != previous:
            low, high = ts - sample, ts
            while high - low > 1:
                middle = (low + high) // 2
                if datetime.fromtimestamp(middle, zone).utcoffset() == previous:
                    low = middle
                else:
                    high = middle
            changes.append(high)
            previous = offset
    return changes
