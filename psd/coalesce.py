"""Merge write units into one call of ``lua/write.lua``: one delta per (hash, field).

Real traffic repeats the same user, day and hour over and over, so the coarse
levels collapse: a workout of 20 points inside one hour costs a few dozen
increments instead of 200.  Pure code, no I/O.
"""

from __future__ import annotations

import time
from itertools import chain
from typing import NamedTuple, Optional

import msgpack

from psd.buckets import DAY, HOUR, MINUTE, MONTH, YEAR
from psd.keys import Layout
from psd.model import WriteUnit

MAX_EXACT = 2**53
_NAMES_CACHE_SIZE = 65536
_TWO_DIGITS = [f"{n:02d}" for n in range(60)]
#: Redis time per HINCRBY, per hash touched (created, in the worst case) and per idempotency
#: key (EXISTS, GET, SET EX NX) in lua/write.lua: bench/script_cost.py's shapes, rounded up
#: so that the model is never below what Redis took on this machine (2 cores, Redis 7.0).
US_PER_INCREMENT = 2.8
US_PER_HASH = 1.5
US_PER_KEY = 3.5


class TotalsHistory(NamedTuple):
    """The bound of each activity's set-total history (``[writer] set_total_history/_ttl``)."""

    cap: int = 1000  # points kept per activity; the oldest go first
    ttl: int = 30 * 86400  # seconds after the activity's last update; 0: kept for ever


#: a set-total writes its difference at its second and takes it back at the next kept point,
#: each under its activity type and 0: 2 x 2 x 5 increments at most
TOTAL_INCREMENTS = 20


class Batch:
    """Units merged so far, and what the write script needs to apply them.

    ``add`` is the hot path: it only sums values per (uid, atid, metric,
    second) and per (count, second), and notes the distinct minutes and hours
    to estimate the script's cost; the fan-out to the five levels happens
    once per batch in :meth:`script_args`.
    """

    def __init__(self, layout: Layout, dedupe_ttl: int, day_names: Optional[dict] = None,
                 history: Optional["TotalsHistory"] = None):
        self.layout = layout
        self.dedupe_ttl = dedupe_ttl
        self.history = history or TotalsHistory()
        self.units: list[WriteUnit] = []
        self.points = 0
        self._day_names = day_names if day_names is not None else {}
        self._seconds: dict = {}
        self._minutes: set = set()
        self._hours: set = set()
        self._counts: dict = {}
        self._totals: list = []
        self._atids: set = set()
        #: (unit index, part index) of each idempotency key, in KEYS order
        self.keyed_parts: list[tuple[int, int]] = []
        self._digests: dict = {}  # idempotency key in this batch -> its part's digest (or None)
        #: items per unit skipped as duplicates: their key came earlier in this batch, or Redis has it
        self.duplicates: dict[int, int] = {}
        #: units left out whole: their Idempotency-Key came earlier in this batch with other content
        self.conflicts: set = set()

    def add(self, unit: WriteUnit, seen: Optional[dict] = None) -> None:
        """Merge a unit, leaving out the parts whose key is in ``seen`` (Redis reported it applied).

        ``seen`` maps each such key to the content digest it was applied with; a
        part with that key and other content is a conflict, not a duplicate.
        """
        seen = seen or {}
        unit_index = len(self.units)
        self.units.append(unit)
        digests = self._digests
        for part in unit.parts:
            if part.digest is None:
                continue
            known = digests.get(part.dedupe_key, seen.get(part.dedupe_key, part.digest))
            if known is not None and known != part.digest:
                self.conflicts.add(unit_index)
                return
        seconds, minutes, hours = self._seconds, self._minutes, self._hours
        totals, atids = self._totals, self._atids
        for part_index, part in enumerate(unit.parts):
            if part.dedupe_key is not None:
                if part.dedupe_key in digests or part.dedupe_key in seen:
                    self.duplicates[unit_index] = self.duplicates.get(unit_index, 0) + part.size()
                    continue
                digests[part.dedupe_key] = part.digest
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
        return 2 * fields + TOTAL_INCREMENTS * len(self._totals) + 5 * len(self._counts)

    def cost_terms(self) -> tuple[int, int, int]:
        """(increments, hashes touched, idempotency keys) of this batch's call: bounds, as above.

        A series' hashes are its distinct minutes plus, per distinct hour, the
        hour, day, month and year hashes (at most).
        """
        hashes = (2 * (len(self._minutes) + 4 * len(self._hours)) + TOTAL_INCREMENTS * len(self._totals)
                  + 5 * len(self._counts))
        return self.increments_estimate(), hashes, len(self.keyed_parts)

    def cost_us(self) -> float:
        """The Redis time this batch's script call should take, by the model of bench/script_cost.py."""
        increments, hashes, keys = self.cost_terms()
        return US_PER_INCREMENT * increments + US_PER_HASH * hashes + US_PER_KEY * keys

    def script_args(self) -> tuple[list, list]:
        """(KEYS, ARGV) for ``lua/write.lua``: KEYS are the idempotency keys, the rest is ARGV[1];
        ARGV[2], when some key has one, maps a key's position to its digest (Idempotency-Key).

        Hash keys travel as a prefix index and a bucket (the script joins
        them), so a key prefix is encoded once per batch, not once per hash.
        """
        layout = self.layout
        prefixes: list[str] = []
        indexes: dict = {}  # (uid, atid, metric) or a count name -> its prefix's index, from 1
        seconds_in_series = [0]  # per prefix index

        def index_of(series, prefix: str) -> int:
            prefixes.append(prefix)
            seconds_in_series.append(0)
            index = indexes[series] = len(prefixes)
            return index

        seconds: dict = {}
        for (uid, atid, metric, ts), value in self._seconds.items():
            if not value:
                continue
            for written_atid in _written_atids(atid):
                series = (uid, written_atid, metric)
                index = indexes.get(series) or index_of(series, layout.hash_prefix(*series))
                key = (index, ts)
                if key in seconds:
                    seconds[key] += value
                else:
                    seconds[key] = value
                    seconds_in_series[index] += 1
        for (name, ts), value in self._counts.items():
            index = indexes.get(name) or index_of(name, layout.count_prefix_of(name))
            seconds[(index, ts)] = value
            seconds_in_series[index] += 1
        hashes = fan_out(seconds, seconds_in_series, self._day_names)

        totals_args = []
        for point in self._totals:
            totals_args.append([layout.totals_key(point.uid, point.metric), str(point.aid), point.total,
                                layout.series_head(point.uid), layout.series_tail(point.metric), str(point.atid),
                                _second_name(self._day_names, point.ts),
                                layout.history_key(point.uid, point.metric, point.aid), point.ts])
        members = []
        for uid, atid in sorted(self._atids):
            members += (layout.atids_key(uid), str(atid))

        seen_keys, digests = [], {}
        for position, (u, p) in enumerate(self.keyed_parts, 1):
            part = self.units[u].parts[p]
            seen_keys.append(layout.seen_key(part.dedupe_key))
            if part.digest is not None:
                digests[position] = part.digest
        argv = msgpack.packb([self.dedupe_ttl, prefixes, hashes, totals_args, members,
                              self.history.cap, self.history.ttl])
        return seen_keys, ([argv, msgpack.packb(digests)] if digests else [argv])


def _written_atids(atid: int) -> tuple:
    """A point counts for its own activity type and for 0, "all activities"."""
    return (atid, 0) if atid else (0,)


def fan_out(seconds: dict, seconds_in_series: list, day_names: dict) -> list:
    """{(series, ts): delta} -> the hashes to increment, flat: series, bucket, n, n x (field, delta), ...

    A series (prefix) with one second in the batch, the common case, gets its
    five hashes of one field each at once.  Otherwise the minute hashes get a
    field per second and each coarser level, per child bucket, the sum of the
    child's fields: one pass per level over the level below.  Zero deltas are
    left out.  Flat, because the script would otherwise build a Lua table per
    hash (measured: a quarter of Redis' time for uniform points).
    """
    flat: list = []
    minute_hashes: dict = {}
    names: dict = {}  # ts -> second name: a point's two series share it
    exact = sum(map(abs, seconds.values())) <= MAX_EXACT
    for (series, ts), delta in seconds.items():
        if not delta:
            continue
        second = names.get(ts)
        if second is None:
            second = names[ts] = _second_name(day_names, ts)
        minute = second[:MINUTE]
        if exact and seconds_in_series[series] == 1:
            hour, day, month = second[:HOUR], second[:DAY], second[:MONTH]
            flat += (series, minute, 1, second, delta, series, hour, 1, minute, delta,
                     series, day, 1, hour, delta, series, month, 1, day, delta,
                     series, second[:YEAR], 1, month, delta)
            continue
        _add_field(minute_hashes, series, minute, second, delta)
    hashes = list(minute_hashes.values())
    level = hashes
    for width in (HOUR, DAY, MONTH, YEAR):
        level = _roll_up(level, width)
        hashes += level
    if not exact:
        _exact_deltas(hashes)
    for fields in hashes:
        fields[2] = (len(fields) - 3) >> 1
    flat += chain.from_iterable(hashes)
    return flat


def _roll_up(children: list, width: int) -> list:
    parents: dict = {}
    for child in children:
        total = child[4] if len(child) == 5 else sum(child[4::2])
        if not total:
            continue
        name = child[1]
        _add_field(parents, child[0], name[:width], name, total)
    return list(parents.values())


def _add_field(hashes: dict, series: int, bucket: str, field: str, delta) -> None:
    """Give hash ``bucket`` of ``series`` a field; callers add each field once per hash."""
    key = (series, bucket)
    fields = hashes.get(key)
    if fields is None:
        hashes[key] = [series, bucket, 0, field, delta]
    else:
        fields += (field, delta)


def _second_name(day_names: dict, ts: int) -> str:
    """``YYYYMMDDHHMMSS``: strftime once per day, the rest from digits."""
    day, in_day = divmod(ts, 86400)
    name = day_names.get(day)
    if name is None:
        if len(day_names) >= _NAMES_CACHE_SIZE:
            day_names.clear()
        name = day_names[day] = time.strftime("%Y%m%d", time.gmtime(day * 86400))
    hour, in_hour = divmod(in_day, 3600)
    return name + _TWO_DIGITS[hour] + _TWO_DIGITS[in_hour // 60] + _TWO_DIGITS[in_hour % 60]


def _exact_deltas(hashes: list) -> None:
    """Lua numbers are doubles: deltas beyond 2^53 travel as decimal text."""
    for fields in hashes:
        for i in range(4, len(fields), 2):
            if not -MAX_EXACT <= fields[i] <= MAX_EXACT:
                fields[i] = str(fields[i])
