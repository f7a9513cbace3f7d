"""Breakdown series: step buckets over a range, in any IANA time zone, and their hash reads.

A step bucket is a local calendar unit (second, minute, hour, day, month,
year) of the requested zone, so a Berlin day can last 23 or 25 hours.  The
store only has UTC buckets; each step bucket is decomposed into UTC hash
field ranges, and the series as a whole reads every hash it needs once: an
aligned month of UTC days is one HGETALL of the month hash.  Pure code, no I/O.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Iterator, NamedTuple, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from psd.buckets import ReadRange, decompose
from psd.errors import InvalidInput

#: Steps of a fixed length in local clock time; the others follow the calendar.
_CLOCK_SPANS = {"second": 1, "minute": 60, "hour": 3600}
STEPS = ("second", "minute", "hour", "day", "month", "year")
MAX_BUCKETS = 10000


class StepBucket(NamedTuple):
    """One entry of a series: the seconds [start, end] it covers, both inclusive."""

    start: int
    end: int


class SeriesPlan(NamedTuple):
    """The step buckets, and the UTC hash reads that sum each of them.

    ``hashes`` names every hash bucket to fetch, once each, in time order.
    """

    buckets: list[StepBucket]
    reads: list[list[ReadRange]]
    hashes: list[str]


def time_zone(name: str) -> ZoneInfo:
    """An IANA zone by name, or InvalidInput."""
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise InvalidInput("tz must be an IANA time zone name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(f"unknown time zone {name!r}") from None


def step_buckets(start: int, end: int, step: str, zone: ZoneInfo, max_buckets: int = MAX_BUCKETS) -> list[StepBucket]:
    """The step buckets overlapping [start, end], clipped to it, at most ``max_buckets``."""
    return list(_clipped_buckets(start, end, step, zone, max_buckets))


def _clipped_buckets(start: int, end: int, step: str, zone: ZoneInfo, max_buckets: int) -> Iterator[StepBucket]:
    _check(start, end, step)
    for count, (bucket_start, next_start) in enumerate(_boundaries(start, end, step, zone)):
        if count == max_buckets:
            raise InvalidInput(f"the series would have more than {max_buckets} buckets: use a coarser step or a shorter range")
        yield StepBucket(max(start, bucket_start), min(end, next_start - 1))


def _check(start: int, end: int, step: str) -> None:
    if step not in STEPS:
        raise InvalidInput(f"step must be one of {', '.join(STEPS)}")
    if start > end:
        raise InvalidInput("from must not be after to")


def _boundaries(start: int, end: int, step: str, zone: ZoneInfo) -> Iterator[tuple[int, int]]:
    """(first second, first second of the next) of each step bucket from the one holding ``start``.

    A clock step bucket starts where the local clock shows a multiple of the
    step, or where the zone's offset changes: at Lord Howe's DST start the
    local hour 01:00+10:30 is followed by 02:30+11:00, a 30-minute hour.  The
    first bucket is clipped to ``start`` anyway, so it is walked from there.
    """
    span = _CLOCK_SPANS.get(step)
    current = start if span else _calendar_start(_local_date(start, zone), step, zone)
    while current <= end:
        if span:
            following = _clock_boundary_after(current, span, zone)
        else:
            following = _calendar_start(_next_date(_local_date(current, zone), step), step, zone)
        yield current, following
        current = following


def _offset(ts: int, zone: ZoneInfo) -> int:
    return int(datetime.fromtimestamp(ts, zone).utcoffset().total_seconds())


def _clock_boundary_after(ts: int, span: int, zone: ZoneInfo) -> int:
    """The first second after ``ts`` that starts a new local clock second, minute or hour.

    That is the next multiple of ``span`` on the local clock at the offset in
    force at ``ts``, unless the offset changes before it: then the change
    (found by bisection; no zone changes its offset twice within an hour).
    """
    offset = _offset(ts, zone)
    following = ts + span - (ts + offset) % span
    if _offset(following - 1, zone) == offset:
        return following
    same, changed = ts, following - 1  # _offset(same) == offset != _offset(changed)
    while changed - same > 1:
        middle = (same + changed) // 2
        if _offset(middle, zone) == offset:
            same = middle
        else:
            changed = middle
    return changed


def _local_date(ts: int, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts, zone).date()


def _calendar_start(day: date, step: str, zone: ZoneInfo) -> int:
    """First second of the local day, month or year holding ``day``.

    Local midnight may fall in a DST gap; fold=0 then names the first instant
    after the gap, which is where that local day really starts.
    """
    if step == "month":
        day = day.replace(day=1)
    elif step == "year":
        day = day.replace(month=1, day=1)
    local_midnight = datetime(day.year, day.month, day.day, tzinfo=zone)
    utc = local_midnight.astimezone(timezone.utc)
    return int(utc.timestamp())


def _next_date(day: date, step: str) -> date:
    if step == "day":
        return date.fromordinal(day.toordinal() + 1)
    if step == "month":
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return date(day.year + 1, 1, 1)


def plan_series(start: int, end: int, step: str, zone: ZoneInfo, max_buckets: int = MAX_BUCKETS) -> SeriesPlan:
    """Step buckets and the fewest distinct hash fetches that sum every one of them."""
    plan, steps = series_planner(start, end, step, zone, max_buckets)
    for _ in steps:
        pass
    return plan


def series_planner(start: int, end: int, step: str, zone: ZoneInfo,
                   max_buckets: int = MAX_BUCKETS) -> tuple[SeriesPlan, Iterator[None]]:
    """:func:`plan_series` as an empty plan and the steps that fill it, one step bucket per step,
    so that a long series (10,000 days in Asia/Kathmandu) is planned in slices between other requests.
    The step and range are checked at once; too many buckets fail the steps."""
    _check(start, end, step)
    plan = SeriesPlan([], [], [])

    def steps():
        seen = set()
        for bucket in _clipped_buckets(start, end, step, zone, max_buckets):
            reads = decompose(bucket.start, bucket.end)
            plan.buckets.append(bucket)
            plan.reads.append(reads)
            for read in reads:
                if read.bucket not in seen:
                    seen.add(read.bucket)
                    plan.hashes.append(read.bucket)
            yield

    return plan, steps()


def sum_series(plan: SeriesPlan, fetched: dict[str, dict[str, int]]) -> list[int]:
    """Each step bucket's sum, from the fetched hashes (hash bucket -> field -> value)."""
    sums: list[int] = []
    for _ in series_sums(plan, fetched, sums):
        pass
    return sums


def series_sums(plan: SeriesPlan, fetched: dict[str, dict[str, int]], sums: list[int]) -> Iterator[None]:
    """:func:`sum_series` in steps, one step bucket each, appending to ``sums``."""
    for bucket_reads in plan.reads:
        total = 0
        for read in bucket_reads:
            total += _sum_fields(fetched.get(read.bucket, {}), read.first, read.last)
        sums.append(total)
        yield


def _sum_fields(fields: dict[str, int], first: Optional[str], last: Optional[str]) -> int:
    if first is None:
        return sum(fields.values())
    if first == last:  # an aligned step bucket: one field
        return fields.get(first, 0)
    return sum(value for field, value in fields.items() if first <= field <= last)
