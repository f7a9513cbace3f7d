"""Merge write units into one call of ``lua/write.lua``: one delta per (hash, field).

Real traffic repeats the same user, day and hour over and over, so the coarse
levels collapse: a workout of 20 points inside one hour costs a few dozen
increments instead of 200.  Pure code, no I/O.
"""

from __future__ import annotations

import time
from itertools import chain
from typing import Optional

import msgpack

from psd.buckets import DAY, HOUR, MONTH, YEAR
from psd.keys import Layout
from psd.model import WriteUnit

MAX_EXACT = 2**53
_NAMES_CACHE_SIZE = 65536
_TWO_DIGITS = [f"{n:02d}" for n in range(60)]


class Batch:
    """Units merged so far, and what the write script needs to apply them.

    ``add`` is the hot path: it only sums values per (uid, atid, metric,
    second) and per (count, second), and notes the distinct minutes and hours
    to estimate the script's cost; the fan-out to the five levels happens
    once per batch in :meth:`script_args`.
    """

    def __init__(self, layout: Layout, dedupe_ttl: int, minute_names: Optional[dict] = None):
        self.layout = layout
        self.dedupe_ttl = dedupe_ttl
        self.units: list[WriteUnit] = []
        self.points = 0
        self._minute_names = minute_names if minute_names is not None else {}
        self._seconds: dict = {}
        self._minutes: set = set()
        self._hours: set = set()
        self._counts: dict = {}
        self._totals: list = []
        self._atids: set = set()
        #: (unit index, part index) of each idempotency key, in KEYS order
        self.keyed_parts: list[tuple[int, int]] = []
        self._keys_in_batch: set = set()
        #: parts skipped because their key came twice in this batch
        self.duplicates_in_batch: dict[int, int] = {}

    def add(self, unit: WriteUnit, skip: frozenset = frozenset()) -> None:
        """Merge a unit, leaving out the parts whose index is in ``skip``."""
        unit_index = len(self.units)
        self.units.append(unit)
        seconds, minutes, hours = self._seconds, self._minutes, self._hours
        totals, atids = self._totals, self._atids
        for part_index, part in enumerate(unit.parts):
            if part_index in skip:
                continue
            if part.dedupe_key is not None:
                if part.dedupe_key in self._keys_in_batch:
                    self.duplicates_in_batch[unit_index] = self.duplicates_in_batch.get(unit_index, 0) + part.size()
                    continue
                self._keys_in_batch.add(part.dedupe_key)
                self.keyed_parts.append((unit_index, part_index))
            for point in part.points:
                uid, atid, metric, value, ts, _, total = point
                atids.add((uid, atid))
                if total is not None:
                    totals.append(point)
                    continue
                key = (uid, atid, metric, ts)
                if key in seconds:
                    seconds[key] += value
                else:
                    seconds[key] = value
                    minutes.add((uid, atid, metric, ts // 60))
                    hours.add((uid, atid, metric, ts // 3600))
            for count in part.counts:
                key = (count.name, count.ts)
                self._counts[key] = self._counts.get(key, 0) + count.value
            self.points += part.size()

    def increments_estimate(self) -> int:
        """About how many HINCRBY this batch will cost, to keep each script call short.

        Exact for the second, minute and hour fields of points, a bound for the
        coarser ones (three per distinct hour); doubled for the copy under atid 0.
        """
        fields = len(self._seconds) + len(self._minutes) + 3 * len(self._hours)
        return 2 * fields + 10 * len(self._totals) + 5 * len(self._counts)

    def script_args(self) -> tuple[list, list]:
        """(KEYS, ARGV) for ``lua/write.lua``: KEYS are the idempotency keys, the rest is ARGV[1].

        Hash keys travel as a prefix index and a bucket (the script joins
        them), so a key prefix is encoded once per batch, not once per hash.
        """
        layout = self.layout
        prefixes: list[str] = []
        indexes: dict = {}  # (uid, atid, metric) or a count name -> its prefix's index, from 1

        def index_of(series, prefix: str) -> int:
            prefixes.append(prefix)
            index = indexes[series] = len(prefixes)
            return index

        seconds: dict = {}
        for (uid, atid, metric, ts), value in self._seconds.items():
            if not value:
                continue
            for written_atid in ((atid, 0) if atid else (0,)):
                series = (uid, written_atid, metric)
                key = (indexes.get(series) or index_of(series, layout.hash_prefix(*series)), ts)
                seconds[key] = seconds.get(key, 0) + value
        for (name, ts), value in self._counts.items():
            seconds[(indexes.get(name) or index_of(name, layout.count_prefix_of(name)), ts)] = value
        hashes = fan_out(seconds, self._minute_names)

        totals_args = []
        for point in self._totals:
            targets = []
            for atid in ((point.atid, 0) if point.atid else (0,)):
                series = (point.uid, atid, point.metric)
                targets.append(indexes.get(series) or index_of(series, layout.hash_prefix(*series)))
            second = _minute_name(self._minute_names, point.ts // 60) + _TWO_DIGITS[point.ts % 60]
            totals_args.append([layout.totals_key(point.uid, point.metric), str(point.aid), point.total,
                                targets, second])
        members = []
        for uid, atid in sorted(self._atids):
            members += (layout.atids_key(uid), str(atid))

        seen_keys = [layout.seen_key(self.units[u].parts[p].dedupe_key) for u, p in self.keyed_parts]
        argv = msgpack.packb([self.dedupe_ttl, prefixes, hashes, totals_args, members])
        return seen_keys, [argv]


def fan_out(seconds: dict, minute_names: dict) -> list:
    """{(series, ts): delta} -> the hashes to increment, flat: series, bucket, n, n x (field, delta), ...

    The minute hashes get a field per second; each coarser level gets, per
    child bucket, the sum of the child's fields, so a level costs one pass
    over the level below it.  Zero deltas are left out.  Flat, because the
    script would otherwise build a Lua table per hash (measured: a quarter
    of Redis' time for uniform points).
    """
    minute_hashes: dict = {}
    for (series, ts), delta in seconds.items():
        if not delta:
            continue
        minute = ts // 60
        key = (series, minute)
        fields = minute_hashes.get(key)
        if fields is None:
            name = _minute_name(minute_names, minute)
            minute_hashes[key] = [series, name, 0, name + _TWO_DIGITS[ts - minute * 60], delta]
        else:
            fields += (fields[1] + _TWO_DIGITS[ts - minute * 60], delta)
    hashes = list(minute_hashes.values())
    level = hashes
    for width in (HOUR, DAY, MONTH, YEAR):
        level = _roll_up(level, width)
        hashes += level
    if sum(map(abs, seconds.values())) > MAX_EXACT:
        _exact_deltas(hashes)
    for fields in hashes:
        fields[2] = (len(fields) - 3) >> 1
    return list(chain.from_iterable(hashes))


def _roll_up(children: list, width: int) -> list:
    parents: dict = {}
    for child in children:
        total = sum(child[4::2])
        if not total:
            continue
        series, name = child[0], child[1]
        bucket = name[:width]
        key = (series, bucket)
        fields = parents.get(key)
        if fields is None:
            parents[key] = [series, bucket, 0, name, total]
        else:
            fields += (name, total)
    return list(parents.values())


def _minute_name(cache: dict, minute: int) -> str:
    name = cache.get(minute)
    if name is None:
        if len(cache) >= _NAMES_CACHE_SIZE:
            cache.clear()
        name = cache[minute] = time.strftime("%Y%m%d%H%M", time.gmtime(minute * 60))
    return name


def _exact_deltas(hashes: list) -> None:
    """Lua numbers are doubles: deltas beyond 2^53 travel as decimal text."""
    for fields in hashes:
        for i in range(4, len(fields), 2):
            if not -MAX_EXACT <= fields[i] <= MAX_EXACT:
                fields[i] = str(fields[i])
