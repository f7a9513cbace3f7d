"""Range sums: decompose each range into hash reads, run them in few script calls.

A script call is capped at ``max_reads_per_call`` hash reads so that a
10,000-user leaderboard never blocks Redis for long; calls are sent together
(txredisapi pipelines them); the script sums exactly and answers in decimal.
"""

from __future__ import annotations

import time
from functools import lru_cache
from operator import itemgetter
from typing import Callable, Iterator, NamedTuple, Optional

from msgpack import packb
from twisted.internet import defer, task

from psd.buckets import YEAR, bucket_end, bucket_of, bucket_start, decompose, next_bucket_start
from psd.cost import DEFAULT_MAX_READS, ReadBudget, window_reads
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


#: Plans up to this many windows run at once; longer ones in slices that yield to the reactor.
INLINE_WINDOWS = 512
#: CPU a slice of a long plan may take before the reactor gets a turn: a request waiting behind a
#: long plan waits this long per reactor turn it needs (a ping needs a few).
SLICE_SECONDS = 0.003


def sliced_cooperator(clock=time.monotonic) -> task.Cooperator:
    """A Cooperator whose slices last at most :data:`SLICE_SECONDS` (Twisted's default is 10 ms)."""
    def slice_over():
        deadline = clock() + SLICE_SECONDS
        return lambda: clock() >= deadline
    return task.Cooperator(terminationPredicateFactory=slice_over)


class Reader:
    """Range sums, series hashes and type sets for the API, each request within a read budget.

    A long plan (a 10,000-user board with an offset each) is worked out in
    slices run by a Cooperator, each ~3 ms, so the reactor keeps answering
    other requests (``/health/ping``) while it is planned and sent.
    """

    def __init__(self, store, layout: Layout, max_reads_per_call: int = 2000,
                 max_reads_per_request: int = DEFAULT_MAX_READS, cooperator: Optional[task.Cooperator] = None):
        self._store = store
        self._layout = layout
        self._max_reads = max_reads_per_call
        self._max_reads_per_request = max_reads_per_request
        self._cooperate = (cooperator or sliced_cooperator()).cooperate

    def budget(self) -> ReadBudget:
        """A fresh budget for one request of several rounds (a leaderboard, a mumt_query)."""
        return ReadBudget(self._max_reads_per_request)

    def sums(self, requests: list[SumRequest], budget: Optional[ReadBudget] = None) -> defer.Deferred:
        """Exact sums, in the order of ``requests``."""
        prefix = self._layout.hash_prefix
        return self._sum_windows([(prefix(r.uid, r.atid, r.metric), r.start, r.end) for r in requests], budget)

    def user_sums(self, users: list[tuple[int, int]], metrics: list[str], start: int, end: int,
                  offsets: Optional[dict] = None, budget: Optional[ReadBudget] = None,
                  before_send: Optional[Callable[[], None]] = None) -> defer.Deferred:
        """The sum of each metric for each (uid, atid) over [start + offset, end + offset],
        the offset being ``offsets.get(uid, 0)``, as :func:`shifted_request` clips it:
        a flat list, metrics varying fastest; 0 where nothing of a shifted window is left.
        ``before_send`` runs once the cost is charged, before the first read is sent."""
        d = self.user_sums_until(users, metrics, start, [end], offsets, budget, before_send)
        return d.addCallback(itemgetter(0))

    def user_sums_until(self, users: list[tuple[int, int]], metrics: list[str], start: int, ends: list[int],
                        offsets: Optional[dict] = None, budget: Optional[ReadBudget] = None,
                        before_send: Optional[Callable[[], None]] = None) -> defer.Deferred:
        """:meth:`user_sums` for each of ``ends`` (a board and its ``compare_to``), one flat list per end,
        charged to the budget together before any of them is read."""
        prefix = self._layout.hash_prefix
        windows, gaps = [], []
        for end in ends:
            missing = []
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
            gaps.append(missing)

        def per_end(found):
            lists, used = [], 0
            for missing in gaps:
                size = (len(users) - len(missing)) * len(metrics)
                flat, used = found[used:used + size], used + size
                for position in missing:  # ascending: each insert lands where the original order wants it
                    flat[position * len(metrics):position * len(metrics)] = [0] * len(metrics)
                lists.append(flat)
            return lists

        return self._sum_windows(windows, budget, before_send).addCallback(per_end)

    def count_sums(self, names: list[str], start: int, end: int, budget: Optional[ReadBudget] = None) -> defer.Deferred:
        """Exact sums of global counters (``c:{name}:{bucket}``) over [start, end], in order."""
        return self._sum_windows([(self._layout.count_prefix_of(name), start, end) for name in names], budget)

    def fetch_buckets(self, uid: int, atid: int, metric: str, buckets: list[str]) -> defer.Deferred:
        """HGETALL of each bucket's hash, sent together: {bucket: {field: int}}.

        A series sums many step buckets from few hashes, so it reads each hash once.
        Many hashes (a day series over 27 years) are sent and decoded in slices.
        """
        prefix = self._layout.hash_prefix(uid, atid, metric)
        replies, fetched = Replies(len(buckets)), {}

        def send():
            for position, bucket in enumerate(buckets):
                replies.expect(self._store.command("HGETALL", prefix + bucket), position)
                yield

        def decode(found):
            for bucket, reply in zip(buckets, found):
                fetched[bucket] = {reply[i]: int(reply[i + 1]) for i in range(0, len(reply), 2)}
                yield

        d = self.sliced(send(), len(buckets))
        d.addCallback(lambda _: replies.all)
        d.addCallback(lambda found: self.sliced(decode(found), len(found)))
        return d.addCallback(lambda _: fetched)

    def atids_of(self, uids: list[int]) -> defer.Deferred:
        """{uid: set of the activity types the user has written} (the write script keeps them).

        One set read per user: the caller charges ``len(uids)`` to its budget."""
        if not uids:
            return defer.succeed({})
        d = self._store.members([self._layout.atids_key(uid) for uid in uids])
        d.addCallback(lambda replies: {uid: {int(m) for m in members} for uid, members in zip(uids, replies)})
        return d

    def sliced(self, steps: Iterator, size: Optional[int] = None) -> defer.Deferred:
        """Run ``steps`` (an iterator doing a bit of a long plan per step) in slices that yield
        to the reactor, or at once when ``size`` says the plan is short; fires when done."""
        if size is not None and size <= INLINE_WINDOWS:
            try:
                for _ in steps:
                    pass
            except Exception:
                return defer.fail()
            return defer.succeed(None)
        return self._cooperate(steps).whenDone()

    def _sum_windows(self, windows: list[tuple[str, int, int]], budget: Optional[ReadBudget] = None,
                     before_send: Optional[Callable[[], None]] = None) -> defer.Deferred:
        """One exact sum per (key prefix, start, end), in script calls of at most
        ``max_reads_per_call`` hash reads (one call is enough for most queries),
        after charging their cost to ``budget`` (a fresh one if None): a request
        over its budget is refused before anything is sent to Redis."""
        budget = budget or self.budget()
        calls: list = []
        d = self.sliced(self._charge(windows, budget), len(windows))
        if before_send is not None:
            d.addCallback(lambda _: before_send())
        d.addCallback(lambda _: self.sliced(self._send_calls(windows, calls), len(windows)))
        d.addCallback(lambda _: self._gather_sums(calls))
        return d

    @staticmethod
    def _charge(windows: list[tuple[str, int, int]], budget: ReadBudget) -> Iterator[None]:
        """Count the hash reads of every window, then charge them (QueryTooCostly past the budget)."""
        window, reads, total = None, 0, 0
        for position, (_, start, end) in enumerate(windows):
            if window != (start, end):
                window, reads = (start, end), window_reads(start, end)
            total += reads
            if not position % 256:
                yield
        budget.charge(total)

    def _send_calls(self, windows: list[tuple[str, int, int]], calls: list) -> Iterator[None]:
        """Build the script calls and send each as soon as it is full, appending its Deferred to ``calls``.

        Requests over the same window share one template of field ranges, so a
        call carries each window's ranges once, and its keys pre-encoded.
        """
        max_reads = self._max_reads
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
                calls.append(self._store.read(EncodedArgs(b"".join(chunks), reads), [packb(templates), packb(runs)]))
                chunks, templates, index, runs, reads = [], [fields], {window: 1}, [1, 0], 0
            encoded = prefix.encode()
            keys_format = formats.get(len(encoded))
            if keys_format is None:
                keys_format = formats[len(encoded)] = _keys_format(buckets, len(encoded))
            chunks.append(keys_format % ((encoded,) * width))
            runs[-1] += 1
            reads += width
            yield
        if chunks:
            calls.append(self._store.read(EncodedArgs(b"".join(chunks), reads), [packb(templates), packb(runs)]))

    @staticmethod
    def _gather_sums(calls: list) -> defer.Deferred:
        if len(calls) == 1:  # the common case: no gathering needed
            return calls[0].addCallback(parse_sums)
        d = gathered(calls)
        return d.addCallback(lambda replies: [total for reply in replies for total in parse_sums(reply)])


class Replies:
    """The replies of many commands, in order, without gatherResults' bookkeeping per Deferred
    (for 20,000 HGETALLs that bookkeeping alone holds the reactor ~100 ms).

    ``all`` fires with the list once every reply is in, or with the first failure.
    """

    def __init__(self, count: int):
        self.all = defer.Deferred()
        self._found: list = [None] * count
        self._missing = count
        if not count:
            self.all.callback(self._found)

    def expect(self, reply: defer.Deferred, position: int) -> None:
        reply.addCallbacks(self._arrived, self._failed, callbackArgs=(position,))

    def _arrived(self, value, position: int) -> None:
        self._found[position] = value
        self._missing -= 1
        if not self._missing and not self.all.called:
            self.all.callback(self._found)

    def _failed(self, failure) -> None:
        if not self.all.called:
            self.all.errback(failure)


def gathered(deferreds: list) -> defer.Deferred:
    """The results of several reads, in order; a failure is the store's own error."""
    return defer.gatherResults(deferreds, consumeErrors=True).addErrback(_first_error)


def _first_error(failure):
    """gatherResults wraps the first failure; hand on the store's own error (StoreUnavailable, ...)."""
    return failure.value.subFailure if isinstance(failure.value, defer.FirstError) else failure
