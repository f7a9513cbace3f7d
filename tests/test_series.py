"""Step buckets in time zones, and the hash reads that sum them: pure, no Redis."""

from __future__ import annotations

import calendar
import random
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, available_timezones

from twisted.trial.unittest import SynchronousTestCase

from psd.buckets import point_fields
from psd.errors import InvalidInput
from psd.series import plan_series, step_buckets, sum_series, time_zone
from tests.wallclock import model_buckets, offset_changes

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*fields) -> int:
    return calendar.timegm(fields + (0,) * (6 - len(fields)))


def spans(buckets) -> list[int]:
    return [b.end - b.start + 1 for b in buckets]


def fetched_from(points: dict[int, int]) -> dict[str, dict[str, int]]:
    """The hashes the writer would leave for {ts: value}, keyed by bucket (one user, metric)."""
    hashes: dict[str, dict[str, int]] = {}
    for ts, value in points.items():
        for bucket, field in point_fields(ts):
            fields = hashes.setdefault(bucket, {})
            fields[field] = fields.get(field, 0) + value
    return hashes


class StepBucketTests(SynchronousTestCase):
    def test_berlin_spring_forward_day_has_23_hours(self):
        start, end = utc(2024, 3, 30, 23), utc(2024, 3, 31, 22) - 1  # local 31 March 00:00 .. 23:59:59
        buckets = step_buckets(start, end, "day", BERLIN)
        self.assertEqual(spans(buckets), [23 * 3600])

    def test_berlin_fall_back_day_has_25_hours(self):
        buckets = step_buckets(utc(2024, 10, 26, 22), utc(2024, 10, 28, 23) - 1, "day", BERLIN)
        self.assertEqual(spans(buckets), [25 * 3600, 24 * 3600])
        self.assertEqual(buckets[1].start, utc(2024, 10, 27, 23))

    def test_fall_back_hours_repeat_as_two_buckets(self):
        buckets = step_buckets(utc(2024, 10, 27, 0), utc(2024, 10, 27, 2) - 1, "hour", BERLIN)
        self.assertEqual([b.start for b in buckets], [utc(2024, 10, 27, 0), utc(2024, 10, 27, 1)])
        self.assertEqual([datetime.fromtimestamp(b.start, BERLIN).hour for b in buckets], [2, 2])

    def test_half_hour_zone_hours_start_at_half_past_utc(self):
        buckets = step_buckets(utc(2024, 1, 1, 0), utc(2024, 1, 1, 2) - 1, "hour", ZoneInfo("Asia/Kolkata"))
        self.assertEqual([b.start for b in buckets], [utc(2024, 1, 1, 0), utc(2024, 1, 1, 0, 30), utc(2024, 1, 1, 1, 30)])
        self.assertEqual(spans(buckets), [1800, 3600, 1800])

    def test_midnight_in_a_dst_gap_starts_the_day_after_the_gap(self):
        """Havana springs forward at local midnight: 8 March 2020 starts at 01:00 CDT."""
        havana = ZoneInfo("America/Havana")
        day_start = int(datetime(2020, 3, 8, 1, tzinfo=havana).timestamp())
        buckets = step_buckets(day_start - 10, day_start + 10, "day", havana)
        self.assertEqual([b.start for b in buckets], [day_start - 10, day_start])
        self.assertEqual(buckets[0].end, day_start - 1)

    def test_leap_year_february_and_year(self):
        months = step_buckets(utc(2024, 1, 1), utc(2025, 1, 1) - 1, "month", UTC)
        self.assertEqual(spans(months)[1], 29 * 86400)
        self.assertEqual(spans(step_buckets(utc(2024, 1, 1), utc(2026, 1, 1) - 1, "year", UTC)),
                         [366 * 86400, 365 * 86400])
        self.assertEqual(spans(step_buckets(utc(2100, 2, 1), utc(2100, 3, 1) - 1, "month", UTC)), [28 * 86400])

    def test_buckets_are_clipped_and_contiguous(self):
        start, end = utc(2024, 3, 15, 16, 56, 45), utc(2024, 5, 2, 3)
        buckets = step_buckets(start, end, "month", BERLIN)
        self.assertEqual((buckets[0].start, buckets[-1].end), (start, end))
        for before, after in zip(buckets, buckets[1:]):
            self.assertEqual(after.start, before.end + 1)

    def test_bucket_cap_is_a_clear_error(self):
        step_buckets(0, 9999, "second", UTC, max_buckets=10000)
        with self.assertRaises(InvalidInput) as caught:
            step_buckets(0, 10000, "second", UTC, max_buckets=10000)
        self.assertIn("more than 10000 buckets", caught.exception.message)

    def test_bad_step_range_and_zone(self):
        for call in (lambda: step_buckets(0, 10, "week", UTC), lambda: step_buckets(10, 0, "day", UTC),
                     lambda: time_zone("Mars/Olympus"), lambda: time_zone("../../etc/passwd"), lambda: time_zone("")):
            self.assertRaises(InvalidInput, call)


class PlanTests(SynchronousTestCase):
    def test_aligned_month_of_days_is_one_hash(self):
        plan = plan_series(utc(2024, 2, 1), utc(2024, 3, 1) - 1, "day", UTC)
        self.assertEqual((len(plan.buckets), plan.hashes), (29, ["202402"]))

    def test_aligned_year_of_months_is_one_hash(self):
        self.assertEqual(plan_series(utc(2023, 1, 1), utc(2024, 1, 1) - 1, "month", UTC).hashes, ["2023"])

    def test_berlin_days_read_one_utc_day_hash_each_plus_one(self):
        plan = plan_series(utc(2024, 1, 1) - 3600, utc(2024, 1, 31) - 3600 - 1, "day", BERLIN)
        self.assertEqual(len(plan.buckets), 30)
        self.assertEqual(len(plan.hashes), 31)

    def test_sums_match_brute_force(self):
        rng = random.Random(4)
        zones = [UTC, BERLIN, ZoneInfo("Asia/Kolkata"), ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")]
        for _ in range(60):
            base = utc(2023, 12, 1) + rng.randrange(0, 3 * 365 * 86400)
            points = {base + rng.randrange(0, 90 * 86400): rng.randrange(-5, 100) for _ in range(200)}
            step = rng.choice(["minute", "hour", "day", "month", "year"])
            start = base + rng.randrange(0, 40 * 86400)
            end = start + rng.randrange(0, {"minute": 5000 * 60}.get(step, 80 * 86400))
            zone = rng.choice(zones)
            plan = plan_series(start, end, step, zone)
            expected = [sum(v for ts, v in points.items() if b.start <= ts <= b.end) for b in plan.buckets]
            self.assertEqual(sum_series(plan, fetched_from(points)), expected)
            self.assertEqual(sum(expected), sum(v for ts, v in points.items() if start <= ts <= end))

    def test_local_days_match_zoneinfo(self):
        for zone in (BERLIN, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe")):
            for bucket in step_buckets(utc(2024, 1, 1), utc(2025, 1, 1), "day", zone)[1:-1]:
                first = datetime.fromtimestamp(bucket.start, zone)
                self.assertEqual((first.hour, first.minute), (0, 0))
                self.assertNotEqual(datetime.fromtimestamp(bucket.end + 1, zone).date(), first.date())
                self.assertEqual(datetime.fromtimestamp(bucket.end, zone).date(), first.date())
        self.assertEqual(datetime.fromtimestamp(0, timezone.utc).year, 1970)


class WallClockModelTests(SynchronousTestCase):
    """Step buckets against a brute-force scan of the seconds (tests.wallclock), around offset changes
    that are not whole hours as well as ordinary ones, at every step."""

    #: zone -> a year holding offset changes of interest
    ZONES = {"Australia/Lord_Howe": 2016, "Pacific/Chatham": 2016, "Asia/Kathmandu": 1985, "America/Caracas": 2007,
             "Asia/Pyongyang": 2015, "Africa/Monrovia": 1972, "Europe/Berlin": 2016, "America/St_Johns": 2016,
             "Australia/Adelaide": 2016, "America/Havana": 2016, "Asia/Tehran": 2016, "Europe/Amsterdam": 1937}
    #: step -> how far either side of a change the series runs
    REACH = {"second": 600, "minute": 3600, "hour": 4 * 3600, "day": 3 * 86400, "month": 70 * 86400,
             "year": 400 * 86400}

    def check_around(self, zone: ZoneInfo, change: int, rng: random.Random):
        for step, reach in self.REACH.items():
            start = change - reach + rng.randrange(-90, 90)
            end = change + reach + rng.randrange(-90, 90)
            got = [(b.start, b.end) for b in step_buckets(start, end, step, zone, max_buckets=10 ** 6)]
            self.assertEqual(got, model_buckets(start, end, step, zone), (zone.key, change, step, start, end))

    def changes_in(self, zone: ZoneInfo, year: int) -> list[int]:
        return offset_changes(zone, utc(year, 1, 1), utc(year + 1, 1, 1))

    def test_named_zones_match_the_model(self):
        rng = random.Random(18)
        for name, year in self.ZONES.items():
            zone = ZoneInfo(name)
            changes = self.changes_in(zone, year)
            self.assertTrue(changes, name)
            for change in changes:
                self.check_around(zone, change, rng)

    def test_random_zones_match_the_model(self):
        rng = random.Random(2026)
        for name in rng.sample(sorted(available_timezones()), 25):
            zone = ZoneInfo(name)
            year = rng.randrange(1900, 2030)
            changes = self.changes_in(zone, year)[:1] or [utc(year, 1, 1) + rng.randrange(365 * 86400)]
            self.check_around(zone, changes[0], rng)

    def test_lord_howe_dst_start_hours(self):
        """01:59:59+10:30 -> 02:30+11:00: the hour before is a whole hour, the one after is 30 minutes."""
        zone = ZoneInfo("Australia/Lord_Howe")
        change = utc(2016, 10, 1, 15, 30)
        points = {change - 20 * 60: 1, change + 10 * 60: 10}  # 01:40+10:30 and 02:40+11:00 local
        plan = plan_series(change - 3600, change + 1799, "hour", zone)
        self.assertEqual([(b.start, b.end) for b in plan.buckets], [(change - 3600, change - 1), (change, change + 1799)])
        self.assertEqual(sum_series(plan, fetched_from(points)), [1, 10])

    def test_range_inside_a_short_hour_is_one_bucket(self):
        """The issue's 500: a bucket whose start came after its end."""
        buckets = step_buckets(1428159597, 1428163199, "hour", ZoneInfo("Australia/Lord_Howe"))
        self.assertEqual(buckets[0].start, 1428159597)
        self.assertTrue(all(b.start <= b.end for b in buckets))
        self.assertEqual([(b.start, b.end) for b in buckets], model_buckets(1428159597, 1428163199, "hour",
                                                                         ZoneInfo("Australia/Lord_Howe")))
