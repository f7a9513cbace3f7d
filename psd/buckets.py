"""Calendar bucket math: which hash fields a point lands in, which a range reads.

A bucket is a UTC time prefix ``YYYY``, ``YYYYMM``, ``YYYYMMDD``, ``YYYYMMDDHH``,
``YYYYMMDDHHMM`` or ``YYYYMMDDHHMMSS``.  A Redis hash named after a bucket
holds, per child bucket (two digits longer), the sum written inside it: the
year hash ``2016`` has fields ``201601``..``201612``, the minute hash
``201603151656`` has one field per second.  Pure functions, no I/O.
"""

from __future__ import annotations

import calendar
import time
from typing import NamedTuple, Optional

#: Widths of the bucket strings, coarsest first; a hash of width w has fields of width w + 2.
YEAR, MONTH, DAY, HOUR, MINUTE, SECOND = 4, 6, 8, 10, 12, 14
KEY_WIDTHS = (YEAR, MONTH, DAY, HOUR, MINUTE)
_SPANS = {DAY: 86400, HOUR: 3600, MINUTE: 60, SECOND: 1}


def second_bucket(ts: int) -> str:
    """``YYYYMMDDHHMMSS`` of a UTC timestamp in seconds."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(ts))


def point_fields(ts: int) -> list[tuple[str, str]]:
    """The (hash bucket, field) pairs one point at ``ts`` increments, coarsest first."""
    second = second_bucket(ts)
    return [(second[:width], second[: width + 2]) for width in KEY_WIDTHS]


def bucket_of(ts: int, width: int) -> str:
    return second_bucket(ts)[:width]


def bucket_start(bucket: str) -> int:
    """First second (UTC timestamp) that a bucket covers."""
    digits = bucket + "0101000000"[len(bucket) - 4 :]
    return calendar.timegm(
        (int(digits[0:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:10]), int(digits[10:12]), int(digits[12:14]))
    )


def bucket_end(bucket: str) -> int:
    """Last second (inclusive) that a bucket covers."""
    return next_bucket_start(bucket) - 1


def next_bucket_start(bucket: str) -> int:
    width = len(bucket)
    if width in _SPANS:
        return bucket_start(bucket) + _SPANS[width]
    year = int(bucket[:4])
    if width == YEAR:
        return calendar.timegm((year + 1, 1, 1, 0, 0, 0))
    month = int(bucket[4:6])
    return calendar.timegm((year + month // 12, month % 12 + 1, 1, 0, 0, 0))


class ReadRange(NamedTuple):
    """Sum the fields of hash ``bucket`` from ``first`` to ``last`` (inclusive).

    ``first`` and ``last`` are None when every field of the hash counts (a
    whole year: there is no coarser hash to read it from as one field).
    """

    bucket: str
    first: Optional[str]
    last: Optional[str]

    def seconds(self) -> tuple[int, int]:
        """The span of time this read covers, inclusive."""
        if self.first is None:
            return bucket_start(self.bucket), bucket_end(self.bucket)
        return bucket_start(self.first), bucket_end(self.last)


def decompose(start: int, end: int) -> list[ReadRange]:
    """The fewest hash reads whose fields add up to exactly [start, end].

    Every child bucket wholly inside the range is read as one field of its
    parent, contiguous children as one field range; only the partial buckets
    at the two edges are opened further, down to seconds.
    """
    if start > end:
        raise ValueError("start must not be after end")
    reads: list[ReadRange] = []
    for year in range(int(bucket_of(start, YEAR)), int(bucket_of(end, YEAR)) + 1):
        bucket = f"{year:04d}"
        low, high = max(start, bucket_start(bucket)), min(end, bucket_end(bucket))
        if low == bucket_start(bucket) and high == bucket_end(bucket):
            reads.append(ReadRange(bucket, None, None))
        else:
            _cover(bucket, low, high, reads)
    return reads


def _cover(parent: str, low: int, high: int, reads: list[ReadRange]) -> None:
    """Append the reads for [low, high], which lies inside bucket ``parent``."""
    width = len(parent) + 2
    first, last = bucket_of(low, width), bucket_of(high, width)
    if width < SECOND:
        first_partial = low != bucket_start(first)
        last_partial = high != bucket_end(last)
        if first == last:
            if first_partial or last_partial:
                _cover(first, low, high, reads)
                return
        else:
            if first_partial:
                _cover(first, low, bucket_end(first), reads)
                first = bucket_of(next_bucket_start(first), width)
            if last_partial:
                _cover(last, bucket_start(last), high, reads)
                last = bucket_of(bucket_start(last) - 1, width)
    if first <= last:
        reads.append(ReadRange(parent, first, last))
