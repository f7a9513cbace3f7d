"""Range sums: decompose each range into hash reads, run them in few script calls.

A script call is capped at ``max_reads_per_call`` hash reads so that a
10,000-user leaderboard never blocks Redis for long; calls are sent together
(txredisapi pipelines them); the script sums exactly and answers in decimal.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Optional

from msgpack import packb
from twisted.internet import defer

from psd.buckets import YEAR, bucket_end, bucket_of, bucket_start, decompose, next_bucket_start
from psd.keys import Layout
from psd.store import EncodedArgs, parse_sums
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


@lru_cache(maxsize=4096)
def _template(start: int, end: int) -> tuple[tuple[bytes, ...], list[str]]:
    """The hashes [start, end] reads, and their field ranges as the read script takes them.

    A range read of a big hash (the 29 whole days of a "last 30 days" in the
    month hash) costs Redis an HGETALL of every field.  When the only fields
    it leaves out are children that are read anyway, at the window's edges,
    it is cheaper as the hash's own total (one HGET of its field in the parent
    hash) minus those children's whole-hash sums, which the HGETALL of each
    child yields for free: ``=field`` reads the parent's field and subtracts
    the ``+first`` reads just before it (the same data: every write adds to all
    five levels in one script).
    """
    reads = [(r.bucket, r.first or "", r.last or "") for r in _reads(start, end)]
    ranged = {bucket: i for i, (bucket, first, last) in enumerate(reads) if first and first != last}
    kept, complements = set(), []
    for i in sorted(ranged.values(), key=lambda i: len(reads[i][0])):  # coarsest first
        bucket, first, last = reads[i]
        if len(bucket) == YEAR or i in kept:
            continue
        width = len(bucket) + 2
        lowest, highest = bucket_of(bucket_start(bucket), width), bucket_of(bucket_end(bucket), width)
        outside = []
        if first != lowest:
            outside.append(bucket_of(bucket_start(first) - 1, width))
        if last != highest:
            outside.append(bucket_of(next_bucket_start(last), width))
        if not outside or (first != lowest and outside[0] != lowest) or (last != highest and outside[-1] != highest):
            continue  # more than one child left out on a side: they are not all read anyway
        if not all(child in ranged and ranged[child] not in kept for child in outside):
            continue
        children = [ranged[child] for child in outside]
        kept.update(children)
        complements.append((i, children))
    converted = {i for i, _ in complements} | kept
    entries = [reads[i] for i in range(len(reads)) if i not in converted]
    for i, children in complements:
        for c in children:
            bucket, first, last = reads[c]
            entries.append((bucket, "+" + first, last))
        bucket = reads[i][0]
        entries.append((bucket[:-2], "=" + bucket, ""))
    return tuple(bucket.encode() for bucket, _, _ in entries), [f for _, first, last in entries for f in (first, last)]


@lru_cache(maxsize=4096)
def _keys_format(buckets: tuple[bytes, ...], prefix_length: int) -> bytes:
    """RESP for the keys ``prefix + bucket``, with ``%s`` where each prefix goes."""
    return b"".join(b"$%d\r\n%%s%s\r\n" % (prefix_length + len(bucket), bucket) for bucket in buckets)


class Reader:
    def __init__(self, store, layout: Layout, max_reads_per_call: int = 2000):
        self._store = store
        self._layout = layout
        self._max_reads = max_reads_per_call

    def sums(self, requests: list[SumRequest]) -> defer.Deferred:
        """Exact sums, in the order of ``requests``."""
        prefix = self._layout.hash_prefix
        return self._sum_windows([(prefix(r.uid, r.atid, r.metric), r.start, r.end) for r in requests])

    def user_sums(self, users: list[tuple[int, int]], metrics: list[str], start: int, end: int,
                  offsets: Optional[dict] = None) -> defer.Deferred:
        """The sum of each metric for each (uid, atid) over [start + offset, end + offset],
        the offset being ``offsets.get(uid, 0)``, as :func:`shifted_request` clips it:
        a flat list, metrics varying fastest; 0 where nothing of a shifted window is left."""
        prefix = self._layout.hash_prefix
        windows, missing = [], []
        low, high = max(0, start), min(MAX_TS, end)
        for position, (uid, atid) in enumerate(users):
            if offsets:
                offset = offsets.get(uid, 0)
                low, high = max(0, start + offset), min(MAX_TS, end + offset)
                if low > high:
                    missing.append(position)
                    continue
            for metric in metrics:
                windows.append((prefix(uid, atid, metric), low, high))
        d = self._sum_windows(windows)
        if missing:
            def zeros(found):
                for position in missing:  # ascending: each insert lands where the original order wants it
                    found[position * len(metrics):position * len(metrics)] = [0] * len(metrics)
                return found
            d.addCallback(zeros)
        return d

    def count_sums(self, names: list[str], start: int, end: int) -> defer.Deferred:
        """Exact sums of global counters (``c:{name}:{bucket}``) over [start, end], in order."""
        return self._sum_windows([(self._layout.count_prefix_of(name), start, end) for name in names])

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
        if not uids:
            return defer.succeed({})
        d = self._store.members([self._layout.atids_key(uid) for uid in uids])
        d.addCallback(lambda replies: {uid: {int(m) for m in members} for uid, members in zip(uids, replies)})
        return d

    def _sum_windows(self, windows: list[tuple[str, int, int]]) -> defer.Deferred:
        """One exact sum per (key prefix, start, end), in script calls of at most
        ``max_reads_per_call`` hash reads (one call is enough for most queries).

        Requests over the same window share one template of field ranges, so a
        call carries each window's ranges once, and its keys pre-encoded.
        """
        calls, max_reads = [], self._max_reads
        chunks, templates, index, runs, reads = [], [], {}, [], 0
        window = formats = None
        for prefix, start, end in windows:
            if window != (start, end):  # a leaderboard is one window for everyone: look it up once
                window, formats = (start, end), {}
                buckets, fields = _template(start, end)
                width, t = len(buckets), index.get(window)
                if t is None:
                    templates.append(fields)
                    t = index[window] = len(templates)
                runs += (t, 0)
            if reads + width > max_reads and chunks:
                calls.append((EncodedArgs(b"".join(chunks), reads), [packb(templates), packb(runs)]))
                chunks, templates, index, runs, reads = [], [fields], {window: 1}, [1, 0], 0
            encoded = prefix.encode()
            keys_format = formats.get(len(encoded))
            if keys_format is None:
                keys_format = formats[len(encoded)] = _keys_format(buckets, len(encoded))
            chunks.append(keys_format % ((encoded,) * width))
            runs[-1] += 1
            reads += width
        if chunks:
            calls.append((EncodedArgs(b"".join(chunks), reads), [packb(templates), packb(runs)]))
        if len(calls) == 1:  # the common case: no gathering needed
            return self._store.read(*calls[0]).addCallback(parse_sums)
        d = defer.gatherResults([self._store.read(keys, args) for keys, args in calls], consumeErrors=True)
        d.addCallback(lambda replies: [total for reply in replies for total in parse_sums(reply)])
        d.addErrback(_first_error)
        return d


def gathered(deferreds: list) -> defer.Deferred:
    """The results of several reads, in order; a failure is the store's own error."""
    return defer.gatherResults(deferreds, consumeErrors=True).addErrback(_first_error)


def _first_error(failure):
    """gatherResults wraps the first failure; hand on the store's own error (StoreUnavailable, ...)."""
    return failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure
