"""Bucket math and range decomposition, checked exhaustively against brute force."""

from __future__ import annotations

import calendar
import random

from twisted.trial.unittest import SynchronousTestCase

from psd.buckets import (DAY, HOUR, MINUTE, MONTH, SECOND, YEAR, ReadRange, bucket_end, bucket_of, bucket_start,
                         decompose, point_fields)

MAX_TS = 2**33 - 1


def utc(*fields) -> int:
    return calendar.timegm(fields + (0,) * (6 - len(fields)))


class PointFieldsTests(SynchronousTestCase):
    def test_seed_point(self):
        self.assertEqual(point_fields(1458061005), [
            ("2016", "201603"), ("201603", "20160315"), ("20160315", "2016031516"),
            ("2016031516", "201603151656"), ("201603151656", "20160315165645")])

    def test_epoch_and_last_second(self):
        self.assertEqual(point_fields(0)[-1], ("197001010000", "19700101000000"))
        self.assertEqual(point_fields(MAX_TS)[-1][1], bucket_of(MAX_TS, SECOND))
        self.assertEqual(bucket_of(MAX_TS, YEAR), "2242")


class BucketSpanTests(SynchronousTestCase):
    def test_spans(self):
        self.assertEqual((bucket_start("2016"), bucket_end("2016")), (utc(2016, 1, 1), utc(2017, 1, 1) - 1))
        self.assertEqual(bucket_end("201602"), utc(2016, 3, 1) - 1)  # leap February
        self.assertEqual(bucket_end("201502"), utc(2015, 3, 1) - 1)
        self.assertEqual(bucket_end("201612"), utc(2017, 1, 1) - 1)
        self.assertEqual(bucket_end("20160229"), utc(2016, 3, 1) - 1)
        self.assertEqual(bucket_end("2016031516"), utc(2016, 3, 15, 17) - 1)
        self.assertEqual(bucket_end("201603151659"), utc(2016, 3, 15, 17) - 1)
        self.assertEqual(bucket_end("20160315165959"), utc(2016, 3, 15, 17) - 1)

    def test_every_width_round_trips(self):
        rng = random.Random(7)
        for _ in range(2000):
            ts = rng.randrange(0, MAX_TS)
            for width in (YEAR, MONTH, DAY, HOUR, MINUTE, SECOND):
                bucket = bucket_of(ts, width)
                self.assertLessEqual(bucket_start(bucket), ts)
                self.assertLessEqual(ts, bucket_end(bucket))
                self.assertEqual(bucket_of(bucket_start(bucket), width), bucket)
                self.assertEqual(bucket_of(bucket_end(bucket) + 1, width) > bucket, True)


class DecomposeTests(SynchronousTestCase):
    def assertExactCover(self, start: int, end: int) -> list[ReadRange]:
        reads = decompose(start, end)
        spans = sorted(r.seconds() for r in reads)
        self.assertEqual(spans[0][0], start)
        self.assertEqual(spans[-1][1], end)
        for (_, previous_end), (next_start, _) in zip(spans, spans[1:]):
            self.assertEqual(previous_end + 1, next_start)
        for r in reads:
            if r.first is not None:
                self.assertEqual(len(r.first), len(r.bucket) + 2)
                self.assertEqual(len(r.last), len(r.bucket) + 2)
                self.assertTrue(r.first.startswith(r.bucket) and r.last.startswith(r.bucket))
                self.assertLessEqual(r.first, r.last)
            else:
                self.assertEqual(len(r.bucket), YEAR)
        # minimal: at most one read per hash, and the partial edges at most two per level below a year
        self.assertEqual(len({r.bucket for r in reads}), len(reads))
        return reads

    def test_seed_query(self):
        self.assertEqual(decompose(1458061005, 1458061010),
                         [ReadRange("201603151656", "20160315165645", "20160315165650")])

    def test_single_second(self):
        self.assertEqual(decompose(1458061005, 1458061005),
                         [ReadRange("201603151656", "20160315165645", "20160315165645")])

    def test_start_after_end(self):
        self.assertRaises(ValueError, decompose, 10, 9)

    def test_whole_units_are_one_field(self):
        self.assertEqual(decompose(utc(2016, 3, 15), utc(2016, 3, 16) - 1), [ReadRange("201603", "20160315", "20160315")])
        self.assertEqual(decompose(utc(2016, 2, 1), utc(2016, 3, 1) - 1), [ReadRange("2016", "201602", "201602")])
        self.assertEqual(decompose(utc(2016, 3, 15, 16), utc(2016, 3, 15, 17) - 1),
                         [ReadRange("20160315", "2016031516", "2016031516")])
        self.assertEqual(decompose(utc(2016, 1, 1), utc(2017, 1, 1) - 1), [ReadRange("2016", None, None)])

    def test_leap_day(self):
        reads = self.assertExactCover(utc(2016, 2, 28, 12), utc(2016, 3, 1, 0, 0, 1))
        self.assertIn(ReadRange("201602", "20160229", "20160229"), reads)
        reads = self.assertExactCover(utc(2015, 2, 28, 12), utc(2015, 3, 1, 0, 0, 1))
        self.assertNotIn("20150229", [r.first for r in reads])

    def test_month_ends_and_year_boundary(self):
        reads = self.assertExactCover(utc(2015, 12, 31, 23, 59, 59), utc(2016, 1, 1))
        self.assertEqual(sorted(reads), [ReadRange("201512312359", "20151231235959", "20151231235959"),
                                         ReadRange("201601010000", "20160101000000", "20160101000000")])
        for month in range(1, 13):
            start = utc(2016, month, 1) - 1
            self.assertExactCover(start, start + 1)

    def test_thirty_days_costs_few_reads(self):
        rng = random.Random(3)
        for _ in range(500):
            start = rng.randrange(0, MAX_TS - 31 * 86400)
            reads = self.assertExactCover(start, start + 30 * 86400)
            self.assertLessEqual(len(reads), 10)

    def test_twenty_years(self):
        reads = self.assertExactCover(utc(2000, 6, 15, 12, 30, 30), utc(2020, 6, 15, 12, 30, 29))
        self.assertIn(ReadRange("2010", None, None), reads)
        self.assertLessEqual(len(reads), 19 + 2 * 5)

    def test_random_ranges_cover_exactly(self):
        rng = random.Random(11)
        for _ in range(3000):
            start = rng.randrange(0, MAX_TS)
            length = rng.choice([0, 1, 59, 60, 61, 3599, 3600, 86399, 86400, 31 * 86400, 400 * 86400,
                                 rng.randrange(0, 10**9)])
            self.assertExactCover(start, min(MAX_TS, start + length))

    def test_whole_range(self):
        self.assertExactCover(0, MAX_TS)

    def test_brute_force_small_ranges(self):
        """Inside two hours around midnight, every (start, end) at 7 s steps sums right."""
        base = utc(2016, 2, 29, 23)
        for start in range(base, base + 7200, 97):
            for end in range(start, base + 7200, 89):
                self.assertExactCover(start, end)
