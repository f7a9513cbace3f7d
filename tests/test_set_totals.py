"""Set-total writes are applied in time order whatever order they arrive in, within their bounds.

The model: an activity's totals sorted by ts write T_i - T_(i-1) at ts_i (T_0 = 0), under the
activity's type and under 0.  Every range sum must equal the model's, for any arrival order,
duplicates and batching; past the history's bound a total is refused and nothing is written.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

from twisted.internet import defer, reactor

from psd import compat
from psd.coalesce import Batch, TotalsHistory
from psd.errors import RejectedByStore
from psd.keys import Layout
from psd.model import Part, Point, WriteUnit
from psd.nsq.messages import parse_message
from psd.reader import Reader, SumRequest
from psd.validation import parse_point
from psd.writer import Writer
from tests.redisfixture import StoreTestCase
from tests.test_store import last_totals

METRICS = frozenset({"points", "steps"})
TS = 1458061005  # 2016-03-15 16:56:45 UTC


def unit_of(point: Point) -> WriteUnit:
    return WriteUnit((Part(None, (point,)),))


def as_input(point: Point, kind: str) -> WriteUnit:
    """The same set-total as each input would deliver it: native JSON, /v1/write, an NSQ envelope."""
    if kind == "native":
        body = {"uid": point.uid, "atid": point.atid, "metric": point.metric, "aid": point.aid,
                "total": point.total, "ts": point.ts}
        return unit_of(parse_point(body, METRICS, 0)[1])
    if kind == "write":
        body = {"thing": point.metric, "uid": point.uid, "atid": point.atid, "aid": point.aid,
                "value": point.total, "ts1": point.ts, "ts2": point.ts}
        return unit_of(compat.write_point(body, METRICS))
    envelope = {"command": "metric", "metric": {"thing": point.metric, "uid": point.uid, "atid": point.atid,
                                                "aid": point.aid, "value": point.total, "ts1": point.ts,
                                                "ts2": point.ts}}
    return parse_message(json.dumps(envelope).encode(), METRICS, unit_key=None)


def in_order_model(updates: list[Point]) -> dict:
    """{(uid, atid, metric, ts): value} from each activity's distinct totals in time order."""
    by_activity = defaultdict(dict)
    for p in updates:
        by_activity[(p.uid, p.metric, p.aid)][p.ts] = p
    model = defaultdict(int)
    for points in by_activity.values():
        previous = 0
        for ts in sorted(points):
            p = points[ts]
            for atid in {p.atid, 0}:
                model[(p.uid, atid, p.metric, ts)] += p.total - previous
            previous = p.total
    return model


def edge_ranges(rng: random.Random, start: int, end: int, count: int) -> list[tuple[int, int]]:
    """Random ranges, half of them one second off a bucket boundary at some level."""
    ranges = []
    for _ in range(count):
        a, b = sorted(rng.randint(start, end) for _ in range(2))
        if rng.random() < 0.5:
            unit = rng.choice([60, 3600, 86400])
            a, b = a - a % unit + rng.choice([-1, 0, 1]), b - b % unit + rng.choice([-1, 0, 1, unit - 1])
            a, b = max(0, min(a, b)), max(a, b)
        ranges.append((a, b))
    return ranges


class SetTotalTests(StoreTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.reader = Reader(self.store, self.layout, max_reads_per_call=500)

    def total(self, ts, total, aid=900, atid=3, uid=1, metric="steps"):
        return self.writer.submit(unit_of(Point(uid, atid, metric, 0, ts, aid=aid, total=total)))

    def sums(self, *ranges, atid=0, uid=1, metric="steps"):
        return self.reader.sums([SumRequest(uid, atid, metric, a, b) for a, b in ranges])

    @defer.inlineCallbacks
    def test_an_older_total_that_arrives_late(self):
        """The issue's example: 4500 at 1458061125, then 4000 at 1458061005 (late)."""
        yield self.total(1458061125, 4500)
        yield self.total(1458061005, 4000)
        self.assertEqual((yield self.sums((1458061000, 1458061200), (1458061000, 1458061100))), [4500, 4000])

    @defer.inlineCallbacks
    def test_a_total_at_a_kept_ts_replaces_it(self):
        yield self.total(TS, 10)
        yield self.total(TS + 10, 30)
        yield self.total(TS, 20)  # a correction of the first point: the second one's step shrinks
        self.assertEqual((yield self.sums((TS, TS), (TS + 10, TS + 10), (0, 2**33 - 1))), [20, 10, 30])
        yield self.total(TS, 20)  # a repeat changes nothing
        self.assertEqual((yield self.sums((TS, TS), (0, 2**33 - 1))), [20, 30])
        self.assertEqual(last_totals(self.server, "hzt:1:steps"), {"900": "30"})

    @defer.inlineCallbacks
    def test_shuffled_duplicated_batched_totals_equal_the_in_order_model(self):
        rng = random.Random(18)
        updates = []
        for activity in range(300):
            uid, metric, atid = rng.randint(1, 4), rng.choice(sorted(METRICS)), rng.choice([0, 1, 7])
            ts, total = TS + rng.randint(-86400 * 40, 86400 * 40), rng.randint(0, 500)
            for _ in range(rng.randint(2, 12)):
                updates.append(Point(uid, atid, metric, 0, ts, aid=activity, total=total))
                ts += rng.choice([1, 59, 60, 61, 3599, 3600, 86399, 86400, rng.randint(1, 86400 * 3)])
                total = max(0, total + rng.choice([rng.randint(0, 3000), -rng.randint(0, 200)]))  # corrections down
        arrivals = updates + rng.sample(updates, len(updates) // 5)  # duplicates, as redeliveries give them
        rng.shuffle(arrivals)
        kinds = ["native", "write", "nsq"]
        for first in range(0, len(arrivals), 50):  # 50 units at once: several totals per coalesced batch
            yield defer.gatherResults([self.writer.submit(as_input(p, rng.choice(kinds)))
                                       for p in arrivals[first:first + 50]])
        self.assertGreater(self.writer.calls, 0)
        model = in_order_model(updates)
        requests, expected = [], []
        for a, b in edge_ranges(rng, TS - 86400 * 45, TS + 86400 * 80, 400):
            uid, atid, metric = rng.randint(1, 4), rng.choice([0, 1, 7]), rng.choice(sorted(METRICS))
            requests.append(SumRequest(uid, atid, metric, a, b))
            expected.append(sum(v for (u, t, m, ts), v in model.items() if (u, t, m) == (uid, atid, metric)
                                and a <= ts <= b))
        found = yield self.reader.sums(requests)
        wrong = [(r, e, f) for r, e, f in zip(requests, expected, found) if e != f]
        self.assertEqual(wrong, [], f"{len(wrong)} of {len(requests)} ranges differ")

    @defer.inlineCallbacks
    def test_past_the_cap_the_oldest_go_and_an_older_total_is_refused(self):
        self.writer = Writer(reactor, self.store, Layout(), window=0.001, history=TotalsHistory(cap=3, ttl=0))
        for i, total in enumerate((10, 20, 30, 40)):
            yield self.total(TS + 100 * i, total)
        self.assertEqual(self.server.call("ZCARD", "hzh:1:steps:900"), b":3\r\n")
        failure = yield self.assertFailure(self.total(TS + 50, 15), RejectedByStore)
        self.assertIn(f"older than the history psd keeps of it (from {TS + 100} on)", str(failure))
        yield self.total(TS + 150, 25)  # inside the kept history: applied in order
        self.assertEqual((yield self.sums((TS, TS + 149), (TS + 150, TS + 150), (0, 2**33 - 1))), [20, 5, 40])
        self.assertEqual(self.server.call("TTL", "hzh:1:steps:900"), b":-1\r\n")  # ttl 0: kept for ever

    @defer.inlineCallbacks
    def test_an_expired_history_keeps_its_newest_point_as_the_floor(self):
        yield self.total(TS, 10)
        yield self.total(TS + 100, 40)
        ttl = int(self.server.call("TTL", "hzh:1:steps:900").split(b":")[1])
        self.assertTrue(0 < ttl <= 30 * 86400, ttl)
        self.server.call("DEL", "hzh:1:steps:900")  # what the expiry does
        yield self.assertFailure(self.total(TS + 50, 20), RejectedByStore)
        yield self.total(TS + 200, 45)
        self.assertEqual((yield self.sums((TS + 200, TS + 200), (0, 2**33 - 1))), [5, 45])

    @defer.inlineCallbacks
    def test_an_activity_written_before_histories_continues_from_its_last_total(self):
        """Data of an older psd: a last total and no history; it counts as the total from the start."""
        yield self.writer.submit(unit_of(Point(1, 3, "steps", 500, TS)))
        self.server.call("HSET", "hzt:1:steps", "900", "500")
        yield self.total(TS - 1000, 800)  # any ts: the legacy total has no time of its own
        self.assertEqual((yield self.sums((0, 2**33 - 1), (TS - 1000, TS - 1000))), [800, 300])
        self.assertEqual(last_totals(self.server, "hzt:1:steps"), {"900": "800"})

    @defer.inlineCallbacks
    def test_a_refused_total_undoes_the_rest_of_its_call(self):
        """One script call: a replacement, a trim and a plain point, then a refused total: nothing stays."""
        history = TotalsHistory(cap=3, ttl=0)
        self.writer = Writer(reactor, self.store, Layout(), window=0.001, history=history)
        for i, total in enumerate((10, 20, 30)):
            yield self.total(TS + 100 * i, total)
        keys = ("hzh:1:steps:900", "hzt:1:steps", "hz:1:3:steps:201603151658", "hz:2:0:steps:2016")
        before = {key: self.server.call("DUMP", key) for key in keys}
        batch = Batch(Layout(), 60, history=history)
        for point in (Point(1, 3, "steps", 0, TS + 100, aid=900, total=25),  # replaces a kept point
                      Point(1, 3, "steps", 0, TS + 300, aid=900, total=40),  # a fourth point: the oldest goes
                      Point(2, 0, "steps", 7, TS),
                      Point(1, 3, "steps", 0, TS + 50, aid=900, total=1)):  # older than the new floor
            batch.add(unit_of(point))
        failure = yield self.assertFailure(self.store.write(*batch.script_args()), RejectedByStore)
        self.assertIn("older than the history", str(failure))
        self.assertEqual({key: self.server.call("DUMP", key) for key in keys}, before)
