"""The read path: read templates (psd.reader), lua/read.lua against a real Redis, the RESP encoder."""

from __future__ import annotations

import calendar
import random
from collections import defaultdict

import txredisapi
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from psd.buckets import point_fields
from psd.model import Part, Point, WriteUnit
from psd.reader import Reader, SumRequest, _template
from psd.store import EncodedArgs, FastEncodingProtocol, parse_sums
from psd.validation import MAX_TS
from tests.redisfixture import StoreTestCase

END = 1719754031  # 2024-06-30 13:27:11 UTC
START = END - 30 * 86400 + 1


def utc(*fields) -> int:
    return calendar.timegm(fields + (0,) * (6 - len(fields)))


def write_model(hashes: dict, ts: int, value: int) -> None:
    """What lua/write.lua does to one (uid, atid, metric): add to the five levels."""
    for bucket, field in point_fields(ts):
        hashes[bucket][field] += value


def run_template(hashes: dict, start: int, end: int) -> int:
    """lua/read.lua's reading of one template, in Python."""
    buckets, fields = _template(start, end)
    total, remembered = 0, 0
    for bucket, first, last in zip((b.decode() for b in buckets), fields[::2], fields[1::2]):
        found = hashes.get(bucket, {})
        if first == "":
            total += sum(found.values())
        elif first.startswith("+"):
            total += sum(v for f, v in found.items() if first[1:] <= f <= last)
            remembered += sum(found.values())
        elif first.startswith("="):
            total += found.get(first[1:], 0) - remembered
            remembered = 0
        else:
            total += sum(v for f, v in found.items() if first <= f <= last)
    return total


def windows(rng: random.Random, around: list[int], count: int):
    lengths = [0, 1, 59, 60, 61, 3599, 3600, 86399, 86400, 7 * 86400, 30 * 86400 - 1, 31 * 86400, 400 * 86400]
    for _ in range(count):
        start = rng.choice(around) + rng.randrange(-90000, 90000)
        end = start + rng.choice(lengths + [rng.randrange(0, 10**8)])
        yield max(0, start), min(MAX_TS, end)


class TemplateTests(SynchronousTestCase):
    def test_thirty_days(self):
        """The benchmark's window: 7 reads, the month's 29 days as its total minus June 30."""
        buckets, fields = _template(START, END)
        self.assertEqual(len(buckets), 7)
        self.assertEqual((buckets[-1], fields[-2:]), (b"2024", ["=202406", ""]))
        self.assertEqual((buckets[-2], fields[-4]), (b"20240630", "+2024063000"))

    def test_templates_sum_exactly(self):
        """Random points and windows near month, day and year edges: the template's sum is the brute-force one."""
        rng = random.Random(5)
        edges = [utc(2024, m, 1) for m in range(1, 13)] + [utc(2024, 2, 29, 12), utc(2023, 12, 31, 23, 59, 59)]
        points = [(rng.choice(edges) + rng.randrange(-200000, 200000), rng.randrange(-50, 100)) for _ in range(3000)]
        hashes = defaultdict(lambda: defaultdict(int))
        for ts, value in points:
            write_model(hashes, ts, value)
        complements = 0
        for start, end in windows(rng, edges, 3000):
            expected = sum(value for ts, value in points if start <= ts <= end)
            self.assertEqual(run_template(hashes, start, end), expected, (start, end))
            complements += any(f.startswith("=") for f in _template(start, end)[1])
        self.assertGreater(complements, 100)

    def test_a_range_with_many_children_left_out_is_read_directly(self):
        """June 3 to the middle of June 30: the month range leaves out June 1 and 2, which are not read."""
        _, fields = _template(utc(2024, 6, 3), utc(2024, 6, 30, 12))
        self.assertFalse(any(f.startswith(("=", "+")) for f in fields))


class EncoderTests(SynchronousTestCase):
    def test_same_bytes_as_txredisapi(self):
        args = ("EVALSHA", b"\x00\xffbin", 3, 2.5, "sm\u00f8rrebr\u00f8d", "", -7, True)
        self.assertEqual(FastEncodingProtocol()._build_command(*args),
                         txredisapi.BaseRedisProtocol()._build_command(*args))

    def test_encoded_args_go_as_they_are(self):
        keys = EncodedArgs(b"$1\r\na\r\n$2\r\nbc\r\n", 2)
        self.assertEqual(FastEncodingProtocol()._build_command("EVALSHA", "x", 2, keys, "arg"),
                         txredisapi.BaseRedisProtocol()._build_command("EVALSHA", "x", 2, "a", "bc", "arg"))

    def test_unencodable_text_is_refused_as_txredisapi_does(self):
        self.assertRaises(txredisapi.InvalidData, FastEncodingProtocol()._build_command, "GET", "\ud800")

    def test_parse_sums(self):
        self.assertEqual(parse_sums("12,0,-3,-1000000000,36028797018963968000"),
                         [12, 0, -3, -10**9, 36028797018963968000])
        self.assertEqual(parse_sums(b"5"), [5])
        self.assertEqual(parse_sums(""), [])


class ReadScriptTests(StoreTestCase):
    """lua/read.lua on a real Redis: every kind of read, negative and huge values, split calls."""

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.hashes = defaultdict(lambda: defaultdict(int))
        self.points = []

    def write(self, points: list[Point]) -> defer.Deferred:
        self.points.extend(points)
        return defer.gatherResults([self.writer.submit(WriteUnit((Part(None, tuple(points[i:i + 500])),)))
                                    for i in range(0, len(points), 500)])

    def expected(self, uid: int, start: int, end: int, metric: str = "points") -> int:
        return sum(p.value for p in self.points if p.uid == uid and p.metric == metric and start <= p.ts <= end)

    @defer.inlineCallbacks
    def test_random_windows_with_negative_and_huge_values(self):
        rng = random.Random(8)
        edges = [START, END, utc(2024, 6, 1), utc(2024, 1, 1), utc(2023, 3, 1), utc(2024, 2, 29, 23, 59, 59)]
        points = []
        for uid in (1, 2, 3):
            for _ in range(400):
                ts = rng.choice(edges) + rng.randrange(-100000, 100000)
                value = rng.choice([rng.randrange(-99, 100), 2**53, -(2**53), rng.randrange(10**9, 10**10),
                                    -rng.randrange(10**9, 10**11), 999_999_999, -1_000_000_000])
                points.append(Point(uid, 0, "points", value, ts))
        yield self.write(points)
        reader = Reader(self.store, self.layout, max_reads_per_call=13)  # several calls per query
        cases = [(uid, start, end) for uid in (1, 2, 3, 4) for start, end in windows(rng, edges, 150)]
        cases += [(1, 0, MAX_TS), (2, utc(2024, 1, 1), utc(2024, 12, 31, 23, 59, 59)), (3, START, END)]
        sums = yield reader.sums([SumRequest(uid, 0, "points", start, end) for uid, start, end in cases])
        self.assertEqual(sums, [self.expected(uid, start, end) for uid, start, end in cases])

    @defer.inlineCallbacks
    def test_sums_far_beyond_two_to_the_53(self):
        """40 x 2^53 in one second, one minute, and spread over a year; and the same with the sign flipped."""
        big = 2**53
        points = [Point(1, 0, "points", big, END - 5) for _ in range(40)]
        points += [Point(2, 0, "points", -big, utc(2024, 3, 1) + 86400 * i) for i in range(40)]
        points += [Point(2, 0, "points", 7, utc(2024, 3, 1))]
        yield self.write(points)
        reader = Reader(self.store, self.layout)
        windows_ = [(1, END - 5, END - 5), (1, START, END), (1, 0, MAX_TS), (2, utc(2024, 3, 1), utc(2024, 3, 1)),
                    (2, START, END), (2, utc(2024, 1, 1), utc(2024, 12, 31, 23, 59, 59)), (2, 0, MAX_TS)]
        sums = yield reader.sums([SumRequest(uid, 0, "points", s, e) for uid, s, e in windows_])
        self.assertEqual(sums, [self.expected(uid, s, e) for uid, s, e in windows_])
        self.assertEqual(sums[0], 40 * big)
        self.assertEqual(sums[-1], -40 * big + 7)

    @defer.inlineCallbacks
    def test_the_same_key_twice_in_one_call(self):
        yield self.write([Point(1, 0, "points", 5, END - 1), Point(1, 0, "points", 3, START)])
        sums = yield Reader(self.store, self.layout).sums([SumRequest(1, 0, "points", START, END)] * 3
                                                          + [SumRequest(1, 0, "points", END - 1, END - 1)])
        self.assertEqual(sums, [8, 8, 8, 5])

    @defer.inlineCallbacks
    def test_no_requests(self):
        sums = yield Reader(self.store, self.layout).sums([])
        self.assertEqual(sums, [])

    @defer.inlineCallbacks
    def test_user_sums_offsets_metrics_and_windows_that_fall_out(self):
        """Metrics vary fastest; a window shifted wholly past MAX_TS or before 0 is 0, in its place;
        windows that change inside a call and calls split mid-run still line up."""
        yield self.write([Point(1, 0, "points", 5, END), Point(1, 0, "steps", 7, END),
                          Point(2, 0, "points", 11, END - 3600), Point(3, 0, "points", 13, 5)])
        reader = Reader(self.store, self.layout, max_reads_per_call=9)
        users = [(1, 0), (2, 0), (3, 0), (4, 0), (2, 0)]
        offsets = {2: -3600, 3: -MAX_TS, 4: 2 * MAX_TS}
        sums = yield reader.user_sums(users, ["points", "steps"], END - 10, END, offsets)
        self.assertEqual(sums, [5, 7, 11, 0, 0, 0, 0, 0, 11, 0])
        sums = yield reader.user_sums([(3, 0)], ["points"], 0, 10, {3: -5})
        self.assertEqual(sums, [13])
        requests = [SumRequest(uid, 0, "points", s, e) for uid in (1, 2, 3)
                    for s, e in ((START, END), (0, MAX_TS), (END - 3600, END), (START, END))]
        expected = [self.expected(r.uid, r.start, r.end) for r in requests]
        self.assertEqual((yield reader.sums(requests)), expected)
