"""The read cost model: exact hash-read counts without decomposing, and the per-request ceiling."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from psd.buckets import bucket_start, decompose
from psd.cost import QueryTooCostly, ReadBudget, window_reads
from psd.errors import InvalidInput
from psd.reader import _template
from psd.validation import MAX_TS


def edge_cases(rng: random.Random, count: int):
    """Windows starting one second either side of a bucket boundary at a random level (a year, a
    month, 29 February, a day, an hour, a minute), of lengths that end at or next to boundaries too,
    and random ones up to the whole range psd stores."""
    for _ in range(count):
        year = rng.randrange(1970, 2200)
        bucket = f"{year}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}{rng.randrange(24):02d}{rng.randrange(60):02d}"
        if rng.random() < 0.1:
            bucket = f"{rng.choice([2000, 2004, 2024, 2096])}0229"
        boundary = bucket_start(bucket[:rng.choice([4, 6, 8, 10, 12])] if len(bucket) > 8 else bucket)
        start = max(0, boundary + rng.choice([-1, 0, 1]))
        length = rng.choice([0, 1, 59, 60, 61, 3599, 3600, 86399, 86400, 86401, 31 * 86400 - 1, 366 * 86400,
                             rng.randrange(10 ** 4), rng.randrange(10 ** 6), rng.randrange(10 ** 8), rng.randrange(10 ** 10)])
        yield start, min(MAX_TS, start + length)


class WindowReadsTests(SynchronousTestCase):
    def test_equals_the_decomposition(self):
        rng = random.Random(16)
        cases = [(0, 0), (0, MAX_TS), (12345, 2 ** 33 - 12345), (951782400, 951868799)]  # the last: 29 Feb 2000
        for start, end in cases + list(edge_cases(rng, 5000)):
            self.assertEqual(window_reads(start, end), len(decompose(start, end)), (start, end))

    def test_equals_what_the_reader_sends(self):
        """The reader's templates trade a range read for a field read, one for one."""
        rng = random.Random(3)
        for start, end in edge_cases(rng, 500):
            self.assertEqual(window_reads(start, end), len(_template(start, end)[0]), (start, end))

    def test_the_issue_window(self):
        """272 years: one read per whole year, and the two ragged edges."""
        self.assertEqual(window_reads(12345, 2 ** 33 - 12345), len(decompose(12345, 2 ** 33 - 12345)))
        self.assertGreater(window_reads(12345, 2 ** 33 - 12345), 270)


class ReadBudgetTests(SynchronousTestCase):
    def test_charges_up_to_the_limit(self):
        budget = ReadBudget(100)
        budget.charge(60)
        budget.charge(40)
        self.assertEqual(budget.spent, 100)

    def test_refusal_names_the_cost_and_the_limit(self):
        budget = ReadBudget(100)
        budget.charge(60)
        with self.assertRaises(QueryTooCostly) as caught:
            budget.charge(41)
        self.assertIsInstance(caught.exception, InvalidInput)
        self.assertIn("101 hash reads", caught.exception.message)
        self.assertIn("100 allowed per request", caught.exception.message)
        self.assertIn("max_reads_per_request", caught.exception.message)
