"""Range sums: decompose each range into hash reads, run them in few script calls.

A script call is capped at ``max_reads_per_call`` hash reads so that a
10,000-user leaderboard never blocks Redis for long; calls are sent together
(txredisapi pipelines them) and summed exactly in Python.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Optional

import msgpack
from twisted.internet import defer

from psd.buckets import decompose
from psd.keys import Layout
from psd.store import parse_sums
from psd.validation import MAX_TS


class SumRequest(NamedTuple):
    """Sum of ``metric`` for ``uid`` and activity type ``atid`` over [start, end]."""

    uid: int
    atid: int
    metric: str
    start: int
    end: int


def shifted_request(uid: int, atid: int, metric: str, start: int, end: int, offset: int) -> Optional[SumRequest]:
    """The request over [start + offset, end + offset] (a user's local day), clipped to
    the timestamps psd stores; None when nothing of the window is left."""
    low, high = max(0, start + offset), min(MAX_TS, end + offset)
    return SumRequest(uid, atid, metric, low, high) if low <= high else None


@lru_cache(maxsize=4096)
def _reads(start: int, end: int):
    return tuple(decompose(start, end))


class Reader:
    def __init__(self, store, layout: Layout, max_reads_per_call: int = 2000):
        self._store = store
        self._layout = layout
        self._max_reads = max_reads_per_call

    def hash_reads(self, request: SumRequest) -> list[tuple[str, str, str]]:
        """(hash key, first field, last field) per read; '' fields = the whole hash."""
        return self._range_reads(self._layout.hash_prefix(request.uid, request.atid, request.metric),
                                 request.start, request.end)

    @staticmethod
    def _range_reads(prefix: str, start: int, end: int) -> list[tuple[str, str, str]]:
        return [(prefix + r.bucket, r.first or "", r.last or "") for r in _reads(start, end)]

    def sums(self, requests: list[SumRequest]) -> defer.Deferred:
        """Exact sums, in the order of ``requests``."""
        return self.sum_reads([self.hash_reads(request) for request in requests])

    def count_sums(self, names: list[str], start: int, end: int) -> defer.Deferred:
        """Exact sums of global counters (``c:{name}:{bucket}``) over [start, end], in order."""
        return self.sum_reads([self._range_reads(self._layout.count_prefix_of(name), start, end) for name in names])

    def fetch_buckets(self, uid: int, atid: int, metric: str, buckets: list[str]) -> defer.Deferred:
        """HGETALL of each bucket's hash, sent together: {bucket: {field: int}}.

        A series sums many step buckets from few hashes, so it reads each hash once.
        """
        prefix = self._layout.hash_prefix(uid, atid, metric)
        d = defer.gatherResults([self._store.command("HGETALL", prefix + bucket) for bucket in buckets],
                                consumeErrors=True)

        def as_dicts(replies):
            return {bucket: {reply[i]: int(reply[i + 1]) for i in range(0, len(reply), 2)}
                    for bucket, reply in zip(buckets, replies)}

        d.addCallback(as_dicts)
        d.addErrback(_first_error)
        return d

    def atids_of(self, uids: list[int]) -> defer.Deferred:
        """{uid: set of the activity types the user has written} (the write script keeps them)."""
        d = defer.gatherResults([self._store.command("SMEMBERS", self._layout.atids_key(uid)) for uid in uids],
                                consumeErrors=True)
        d.addCallback(lambda replies: {uid: {int(m) for m in members} for uid, members in zip(uids, replies)})
        d.addErrback(_first_error)
        return d

    def sum_reads(self, groups: list[list[tuple[str, str, str]]]) -> defer.Deferred:
        """One exact sum per group of (hash key, first, last) reads."""
        calls, keys, index, args, reads = [], [], {}, [], 0
        for group in groups:
            if reads + len(group) > self._max_reads and args:
                calls.append((keys, args))
                keys, index, args, reads = [], {}, [], 0
            flat = []
            for key, first, last in group:
                j = index.get(key)
                if j is None:
                    keys.append(key)
                    j = index[key] = len(keys)
                flat += (j, first, last)
            args.append(flat)
            reads += len(group)
        if args:
            calls.append((keys, args))
        if len(calls) == 1:  # the common case: no gathering needed
            return self._store.read(calls[0][0], [msgpack.packb(calls[0][1])]).addCallback(parse_sums)
        d = defer.gatherResults(
            [self._store.read(call_keys, [msgpack.packb(call_args)]) for call_keys, call_args in calls],
            consumeErrors=True,
        )
        d.addCallback(lambda replies: [total for reply in replies for total in parse_sums(reply)])
        d.addErrback(_first_error)
        return d


def _first_error(failure):
    """gatherResults wraps the first failure; hand on the store's own error (StoreUnavailable, ...)."""
    return failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure
