"""Range sums: decompose each range into hash reads, run them in few script calls.

A script call is capped at ``max_reads_per_call`` hash reads so that a
10,000-user leaderboard never blocks Redis for long; calls are sent together
(txredisapi pipelines them) and summed exactly in Python.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import msgpack
from twisted.internet import defer

from psd.buckets import decompose
from psd.keys import Layout
from psd.store import parse_sums


class SumRequest(NamedTuple):
    """Sum of ``metric`` for ``uid`` and activity type ``atid`` over [start, end]."""

    uid: int
    atid: int
    metric: str
    start: int
    end: int


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
        prefix = self._layout.hash_prefix(request.uid, request.atid, request.metric)
        return [(prefix + r.bucket, r.first or "", r.last or "") for r in _reads(request.start, request.end)]

    def sums(self, requests: list[SumRequest]) -> defer.Deferred:
        """Exact sums, in the order of ``requests``."""
        return self.sum_reads([self.hash_reads(request) for request in requests])

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
        d = defer.gatherResults(
            [self._store.read(call_keys, [msgpack.packb(call_args)]) for call_keys, call_args in calls],
            consumeErrors=True,
        )
        d.addCallback(lambda replies: [total for reply in replies for total in parse_sums(reply)])
        d.addErrback(lambda failure: failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure)
        return d
