"""The store, writer and reader against a real redis-server: the seed's layout byte for byte."""

from __future__ import annotations

from twisted.internet import defer

from psd.errors import RejectedByStore, StoreUnavailable
from psd.store import RedisAddress
from psd.model import Count, Part, Point, WriteUnit, group_parts
from psd.reader import Reader, SumRequest
from tests.redisfixture import RedisServer, StoreTestCase, free_port

SEED_TS = 1458061005  # 2016-03-15 16:56:45 UTC


def hgetall(server: RedisServer, key: str) -> dict:
    reply = server.call("HGETALL", key).split(b"\r\n")
    items = [reply[i].decode() for i in range(2, len(reply) - 1, 2)]
    return dict(zip(items[::2], items[1::2]))


def last_totals(server: RedisServer, key: str) -> dict:
    """aid -> newest total, from a totals hash (its other fields describe the history)."""
    return {field: value for field, value in hgetall(server, key).items() if ":" not in field}


def points_unit(*points: Point, key=None) -> WriteUnit:
    return WriteUnit((Part(key, tuple(points)),))


class StoreTests(StoreTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.reader = Reader(self.store, self.layout, max_reads_per_call=7)

    def write(self, *points: Point, key=None):
        return self.writer.submit(points_unit(*points, key=key))

    @defer.inlineCallbacks
    def test_seed_layout(self):
        """The seed's three writes leave exactly the seed's hashes, atid 0 and 3."""
        yield defer.gatherResults([
            self.write(Point(1, 3, "points", 10, SEED_TS)),
            self.write(Point(1, 3, "points", 11, SEED_TS + 3)),
            self.write(Point(1, 3, "points", 1, SEED_TS + 6)),
        ])
        for atid in (0, 3):
            prefix = f"hz:1:{atid}:points:"
            self.assertEqual(hgetall(self.server, prefix + "2016"), {"201603": "22"})
            self.assertEqual(hgetall(self.server, prefix + "201603"), {"20160315": "22"})
            self.assertEqual(hgetall(self.server, prefix + "20160315"), {"2016031516": "22"})
            self.assertEqual(hgetall(self.server, prefix + "2016031516"), {"201603151656": "22"})
            self.assertEqual(hgetall(self.server, prefix + "201603151656"),
                             {"20160315165645": "10", "20160315165648": "11", "20160315165651": "1"})
        sums = yield self.reader.sums([SumRequest(1, 3, "points", SEED_TS, SEED_TS + 5),
                                       SumRequest(1, 0, "points", SEED_TS, SEED_TS + 6),
                                       SumRequest(2, 0, "points", SEED_TS, SEED_TS + 6)])
        self.assertEqual(sums, [21, 22, 0])

    @defer.inlineCallbacks
    def test_atid_zero_written_once(self):
        yield self.write(Point(5, 0, "steps", 7, SEED_TS))
        self.assertEqual(hgetall(self.server, "hz:5:0:steps:2016"), {"201603": "7"})

    @defer.inlineCallbacks
    def test_script_flush_is_survived(self):
        yield self.write(Point(1, 0, "points", 1, SEED_TS))
        self.assertEqual(self.server.call("SCRIPT", "FLUSH"), b"+OK\r\n")
        yield self.write(Point(1, 0, "points", 1, SEED_TS))
        self.server.call("SCRIPT", "FLUSH")
        sums = yield self.reader.sums([SumRequest(1, 0, "points", 0, 2**33 - 1)])
        self.assertEqual(sums, [2])

    @defer.inlineCallbacks
    def test_sums_beyond_double_precision_are_exact(self):
        big = 2**53
        yield defer.gatherResults([self.write(Point(9, 0, "points", big, SEED_TS + i)) for i in range(40)])
        yield self.write(Point(9, 0, "points", -3, SEED_TS + 50))
        sums = yield self.reader.sums([SumRequest(9, 0, "points", SEED_TS, SEED_TS + 100),
                                       SumRequest(9, 0, "points", SEED_TS + 50, SEED_TS + 50)])
        self.assertEqual(sums, [40 * big - 3, -3])

    @defer.inlineCallbacks
    def test_overflow_undoes_the_whole_call(self):
        """A stored sum near 2**63 - 1 makes the script fail; nothing of the batch stays."""
        self.server.call("HSET", "hz:1:0:points:201603151656", "20160315165645", str(2**63 - 5))
        d1 = self.write(Point(2, 0, "points", 5, SEED_TS))
        d2 = self.write(Point(1, 0, "points", 10, SEED_TS), Point(3, 0, "points", 1, SEED_TS))
        first = yield d1
        self.assertEqual(first.written, 1)
        yield self.assertFailure(d2, RejectedByStore)
        self.assertEqual(hgetall(self.server, "hz:1:0:points:201603151656"), {"20160315165645": str(2**63 - 5)})
        self.assertEqual(hgetall(self.server, "hz:1:0:points:2016"), {})
        self.assertEqual(hgetall(self.server, "hz:3:0:points:2016"), {})
        self.assertEqual(hgetall(self.server, "hz:2:0:points:2016"), {"201603": "5"})

    @defer.inlineCallbacks
    def test_wrong_type_key_undoes_the_whole_call(self):
        self.server.call("SET", "hz:1:0:points:20160315", "not a hash")
        d = self.write(Point(1, 0, "points", 10, SEED_TS))
        yield self.assertFailure(d, RejectedByStore)
        self.assertEqual(hgetall(self.server, "hz:1:0:points:2016"), {})

    @defer.inlineCallbacks
    def test_idempotency_key_applies_once(self):
        results = yield defer.gatherResults([
            self.write(Point(1, 0, "points", 10, SEED_TS), key="h:a"),
            self.write(Point(1, 0, "points", 10, SEED_TS), key="h:a"),
        ])
        later = yield self.write(Point(1, 0, "points", 10, SEED_TS), key="h:a")
        other = yield self.write(Point(1, 0, "points", 4, SEED_TS), key="h:b")
        self.assertEqual([(r.written, r.duplicates) for r in results + [later, other]],
                         [(1, 0), (0, 1), (0, 1), (1, 0)])
        sums = yield self.reader.sums([SumRequest(1, 0, "points", SEED_TS, SEED_TS)])
        self.assertEqual(sums, [14])
        ttl = int(self.server.call("TTL", "hz:id:h:a")[1:-2])
        self.assertTrue(86000 < ttl <= 86400, ttl)

    @defer.inlineCallbacks
    def test_thousands_of_keys_in_one_call(self):
        """Keys are checked 1,000 at a time: a seen key is found wherever it falls in those chunks."""
        def keyed(ids):
            return WriteUnit(group_parts([(str(i), Point(1, 0, "points", 1, SEED_TS + i)) for i in ids]))

        first = yield self.writer.submit(keyed(range(2500)))
        # the one seen key is the 2,000th: the last of the second chunk
        again = yield self.writer.submit(keyed([*range(2500, 4499), 10, *range(4499, 5000)]))
        self.assertEqual((first, again), ((2500, 0), (2500, 1)))
        sums = yield self.reader.sums([SumRequest(1, 0, "points", 0, 2**33 - 1)])
        self.assertEqual(sums, [5000])

    @defer.inlineCallbacks
    def test_point_ids_dedupe_parts_of_a_request(self):
        first = WriteUnit(group_parts([("x", Point(1, 0, "points", 1, SEED_TS)), (None, Point(1, 0, "points", 2, SEED_TS))]))
        again = WriteUnit(group_parts([("x", Point(1, 0, "points", 1, SEED_TS)), ("y", Point(1, 0, "points", 4, SEED_TS))]))
        r1 = yield self.writer.submit(first)
        r2 = yield self.writer.submit(again)
        self.assertEqual((r1, r2), ((2, 0), (1, 1)))
        sums = yield self.reader.sums([SumRequest(1, 0, "points", SEED_TS, SEED_TS)])
        self.assertEqual(sums, [7])

    @defer.inlineCallbacks
    def test_set_total_writes_the_difference(self):
        """Re-sending a total changes nothing; a corrected total adds the difference at its ts."""
        yield self.write(Point(1, 2, "steps", 0, SEED_TS, aid=77, total=100))
        yield self.write(Point(1, 2, "steps", 0, SEED_TS + 60, aid=77, total=100))
        yield self.write(Point(1, 2, "steps", 0, SEED_TS + 120, aid=77, total=130))
        yield self.writer.submit(WriteUnit((Part(None, (Point(1, 2, "steps", 0, SEED_TS + 180, aid=78, total=5),
                                                        Point(1, 2, "steps", 0, SEED_TS + 180, aid=78, total=9))),)))
        sums = yield self.reader.sums([SumRequest(1, 2, "steps", SEED_TS, SEED_TS + 59),
                                       SumRequest(1, 0, "steps", SEED_TS + 60, SEED_TS + 119),
                                       SumRequest(1, 0, "steps", SEED_TS + 120, SEED_TS + 120),
                                       SumRequest(1, 0, "steps", 0, 2**33 - 1)])
        self.assertEqual(sums, [100, 0, 30, 139])
        self.assertEqual(last_totals(self.server, "hzt:1:steps"), {"77": "130", "78": "9"})

    @defer.inlineCallbacks
    def test_counts_and_atids(self):
        yield self.writer.submit(WriteUnit((Part(None, (Point(4, 2, "points", 1, SEED_TS), Point(4, 5, "points", 1, SEED_TS)),
                                                 (Count("signups", 3, SEED_TS),)),)))
        self.assertEqual(hgetall(self.server, "c:signups:201603151656"), {"20160315165645": "3"})
        members = self.server.call("SMEMBERS", "hza:4")
        self.assertEqual(sorted(m for m in members.split(b"\r\n") if m.isdigit()), [b"2", b"5"])

    @defer.inlineCallbacks
    def test_undo_restores_existing_fields_and_removes_new_ones(self):
        """Fields that existed get their old value back; new fields, hashes and members go."""
        yield self.write(Point(7, 2, "points", 5, SEED_TS))
        keys = ("hz:7:2:points:2016", "hz:7:0:points:2016", "hz:7:2:points:201603151656")
        before = {key: hgetall(self.server, key) for key in keys}
        # uid 7's fields exist, uid 8 is new, and uid 9's year hash overflows: year hashes come last
        self.server.call("HSET", "hz:9:0:points:2016", "201603", str(2**63 - 5))
        d = self.write(Point(7, 2, "points", 3, SEED_TS), Point(8, 4, "points", 1, SEED_TS + 1),
                       Point(9, 0, "points", 10, SEED_TS))
        yield self.assertFailure(d, RejectedByStore)
        self.assertEqual({key: hgetall(self.server, key) for key in keys}, before)
        self.assertEqual(self.server.call("EXISTS", "hz:8:4:points:2016", "hz:8:0:points:2016", "hza:8",
                                          "hz:9:0:points:201603151656"), b":0\r\n")

    @defer.inlineCallbacks
    def test_undo_of_a_set_total_that_overflows(self):
        """The set-total difference is written after the plain increments; its failure undoes them too."""
        yield self.write(Point(6, 1, "steps", 0, SEED_TS, aid=3, total=10))
        self.server.call("HSET", "hz:6:0:steps:2016", "201603", str(2**63 - 20))
        d = self.write(Point(6, 1, "steps", 0, SEED_TS + 5, aid=3, total=40), Point(5, 0, "steps", 2, SEED_TS))
        yield self.assertFailure(d, RejectedByStore)
        self.assertEqual(last_totals(self.server, "hzt:6:steps"), {"3": "10"})
        self.assertEqual(self.server.call("ZCARD", "hzh:6:steps:3"), b":1\r\n")
        self.assertEqual(hgetall(self.server, "hz:6:1:steps:201603151656"), {"20160315165645": "10"})
        self.assertEqual(hgetall(self.server, "hz:6:1:steps:2016"), {"201603": "10"})
        self.assertEqual(self.server.call("EXISTS", "hz:5:0:steps:2016", "hza:5"), b":0\r\n")


class HealthTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_ping_needs_the_write_connection_too(self):
        """/health pings through this: it must not say ok while writes would find no connection."""
        self.assertEqual((yield self.store.ping()), "PONG")
        write_pool = self.store._pools["write"]
        self.store._pools["write"] = RedisAddress(f"redis://127.0.0.1:{free_port()}/0").connect(1, 1, 1)
        self.addCleanup(self.store._pools["write"].disconnect)
        self.addCleanup(write_pool.disconnect)
        failure = yield self.assertFailure(self.store.ping(), StoreUnavailable)
        self.assertIn("not connected", str(failure))
