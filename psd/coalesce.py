"""Merge write units into one call of ``lua/write.lua``: one delta per (hash, field).

Real traffic repeats the same user, day and hour over and over, so the coarse
levels collapse: a workout of 20 points inside one hour costs a few dozen
increments instead of 200.  Pure code, no I/O.
"""

from __future__ import annotations

from typing import Iterable, Optional

import msgpack

from psd.buckets import point_fields
from psd.keys import Layout
from psd.model import WriteUnit

MAX_EXACT = 2**53
_FIELDS_CACHE_SIZE = 65536


class Batch:
    """Units merged so far, and what the write script needs to apply them.

    ``add`` is the hot path: it only sums values per (uid, atid, metric,
    second) and per (count, second), and notes the distinct minutes and hours
    to estimate the script's cost; the fan-out to the five levels happens
    once per distinct second in :meth:`script_args`.
    """

    def __init__(self, layout: Layout, dedupe_ttl: int, fields_cache: Optional[dict] = None):
        self.layout = layout
        self.dedupe_ttl = dedupe_ttl
        self.units: list[WriteUnit] = []
        self.points = 0
        self._fields = fields_cache if fields_cache is not None else {}
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

    def _point_fields(self, ts: int) -> list:
        fields = self._fields.get(ts)
        if fields is None:
            if len(self._fields) >= _FIELDS_CACHE_SIZE:
                self._fields.clear()
            fields = self._fields[ts] = point_fields(ts)
        return fields

    def script_args(self) -> tuple[list, list]:
        """(KEYS, ARGV) for ``lua/write.lua``.

        The fan-out loop runs ten times per distinct second, so it is written
        flat: key prefixes and bucket strings are made once per batch and per
        distinct second, and the index of keys is only built for set-total
        writes, which must refer to hash keys by position.
        """
        layout = self.layout
        incr: dict[str, dict[str, int]] = {}
        prefixes: dict = {}
        point_fields = self._point_fields
        for (uid, atid, metric, ts), value in self._seconds.items():
            if not value:
                continue
            fields = point_fields(ts)
            for written_atid in ((atid, 0) if atid else (0,)):
                prefix = prefixes.get((uid, written_atid, metric))
                if prefix is None:
                    prefix = prefixes[(uid, written_atid, metric)] = layout.hash_prefix(uid, written_atid, metric)
                _add_fields(incr, prefix, fields, value)
        for (name, ts), value in self._counts.items():
            if value:
                _add_fields(incr, layout.count_prefix_of(name), point_fields(ts), value)

        hash_keys, incr_args = [], []
        for key, fields in incr.items():
            flat = _flat_fields(fields)
            if flat:
                hash_keys.append(key)
                incr_args.append(flat)
        totals_args = self._totals_args(hash_keys) if self._totals else []
        members, atids_index = [], {}
        for uid, atid in sorted(self._atids):
            key = layout.atids_key(uid)
            j = atids_index.get(key)
            if j is None:
                hash_keys.append(key)
                j = atids_index[key] = len(hash_keys)
            members += (j, str(atid))
        incr_args += [[]] * (len(hash_keys) - len(incr_args))

        seen_keys = [layout.seen_key(self.units[u].parts[p].dedupe_key) for u, p in self.keyed_parts]
        argv = msgpack.packb([self.dedupe_ttl, len(seen_keys), incr_args, totals_args, members])
        return seen_keys + hash_keys, [argv]

    def _totals_args(self, hash_keys: list) -> list:
        """The set-total entries; keys they name that are not in ``hash_keys`` yet are appended."""
        layout = self.layout
        index = {key: j for j, key in enumerate(hash_keys, 1)}

        def key_index(key: str) -> int:
            j = index.get(key)
            if j is None:
                hash_keys.append(key)
                j = index[key] = len(hash_keys)
            return j

        totals_args = []
        for point in self._totals:
            targets = []
            for atid in _atids_written(point.atid):
                for bucket, field in self._point_fields(point.ts):
                    targets += (key_index(layout.hash_key(point.uid, atid, point.metric, bucket)), field)
            totals_args.append([key_index(layout.totals_key(point.uid, point.metric)), str(point.aid), point.total, targets])
        return totals_args


def _add_fields(incr: dict, prefix: str, fields: list, value: int) -> None:
    for bucket, field in fields:
        key = prefix + bucket
        hash_fields = incr.get(key)
        if hash_fields is None:
            incr[key] = {field: value}
        elif field in hash_fields:
            hash_fields[field] += value
        else:
            hash_fields[field] = value


def _atids_written(atid: int) -> Iterable[int]:
    """A point counts for its own activity type and for 0, "all activities"."""
    return (atid, 0) if atid else (0,)


def _flat_fields(fields: dict) -> list:
    flat = []
    append = flat.append
    for field, delta in fields.items():
        if delta:
            append(field)
            append(delta if -MAX_EXACT <= delta <= MAX_EXACT else str(delta))
    return flat
