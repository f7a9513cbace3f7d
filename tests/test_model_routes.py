"""Every read route of a real psd over a real Redis against a brute-force model of what was written.

Random points and counts around edges (one second either side of minute, hour,
day, month and year boundaries, 29 February, DST days, half-hour and 45-minute
zones), then random queries of every read route, each answer recomputed from
the list of points: sums with offsets, series in many zones, leaderboards with
compare_to, the original psd's routes with ``_atids``, global counts.
"""

from __future__ import annotations

import calendar
import random
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from twisted.internet import defer

from psd.leaderboard import standings
from tests.psdfixture import PsdTestCase
from tests.wallclock import model_buckets


def utc(*fields) -> int:
    return calendar.timegm(fields + (0,) * (6 - len(fields)))


#: Instants next to which points are written and windows start or end.
ANCHORS = [utc(2016, 2, 29), utc(2016, 3, 1), utc(2016, 1, 1), utc(2015, 12, 31, 23, 59, 59),
           utc(2016, 3, 27, 1), utc(2016, 10, 30, 1),  # Berlin DST start and end
           utc(2016, 10, 1, 15, 30), utc(2016, 4, 2, 15),  # Lord Howe DST start and end (30 minutes)
           utc(2016, 9, 24, 14), utc(2016, 3, 15, 16, 56, 45), utc(2016, 3, 15, 17), utc(2016, 3, 15, 16, 57)]
ZONES = ["UTC", "Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe", "Pacific/Chatham", "Asia/Kolkata",
         "America/St_Johns"]
METRICS = ["points", "steps"]
UIDS = list(range(1, 9))
TYPES = [0, 1, 2, 3]  # 0: an untyped point
NAMES = ["views", "clicks_1", "clicks_2"]
#: (zone, an offset change of it among the anchors): series across them are asked for often
SHIFTS = [("Australia/Lord_Howe", utc(2016, 10, 1, 15, 30)), ("Australia/Lord_Howe", utc(2016, 4, 2, 15)),
          ("Pacific/Chatham", utc(2016, 9, 24, 14)), ("Europe/Berlin", utc(2016, 3, 27, 1)),
          ("Europe/Berlin", utc(2016, 10, 30, 1))]
#: step -> the longest series asked for (the model scans its seconds)
SERIES_REACH = {"minute": 3 * 3600, "hour": 3 * 86400, "day": 12 * 86400, "month": 200 * 86400}


class Model:
    def __init__(self):
        self.points: list[dict] = []
        self.counts: list[dict] = []

    def sum(self, uid: int, metric: str, start: int, end: int, atid: int = 0) -> int:
        return sum(p["value"] for p in self.points if p["uid"] == uid and p["metric"] == metric
                   and start <= p["ts"] <= end and atid in (0, p["atid"]))

    def count(self, name: str, start: int, end: int) -> int:
        return sum(c["value"] for c in self.counts if c["name"] == name and start <= c["ts"] <= end)

    def atids(self, uid: int, metrics: list[str], start: int, end: int, atid: int) -> list[int]:
        """The types whose own sum is not zero for some metric (with a filter: the filter, if so)."""
        candidates = [atid] if atid else sorted({p["atid"] for p in self.points if p["uid"] == uid})
        return [a for a in candidates
                if any(sum(p["value"] for p in self.points if p["uid"] == uid and p["metric"] == m
                           and p["atid"] == a and start <= p["ts"] <= end) for m in metrics)]


class ModelRouteTests(PsdTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.rng = random.Random(1618)
        self.model = Model()
        yield self.write_random()

    def instant(self) -> int:
        anchor = self.rng.choice(ANCHORS)
        return anchor + self.rng.choice([-1, 0, 1, self.rng.randrange(-120, 120), self.rng.randrange(-4000, 4000),
                                         self.rng.randrange(-3 * 86400, 3 * 86400)])

    def window(self) -> tuple[int, int]:
        start = self.instant()
        length = self.rng.choice([0, 1, 59, 60, 3599, 3600, 86399, 86400, 86401, 2 * 86400 - 1, 31 * 86400,
                                  self.rng.randrange(7 * 86400)])
        return start, start + length

    @defer.inlineCallbacks
    def write_random(self):
        rng = self.rng
        for _ in range(6):
            batch = [{"uid": rng.choice(UIDS), "atid": rng.choice(TYPES), "metric": rng.choice(METRICS),
                      "value": rng.choice([1, 5, -5, rng.randrange(-50, 1000), 10 ** 12]), "ts": self.instant()}
                     for _ in range(60)]
            status, body, _ = yield self.psd.post("/v1/points", batch)
            self.assertEqual((status, body), (200, {"written": 60, "duplicates": 0}))
            self.model.points += batch
        # types that cancel: +5 on 1 and -5 on 2 at one instant, for a user of their own
        cancel = [{"uid": 9, "atid": 1, "metric": "points", "value": 5, "ts": ANCHORS[0]},
                  {"uid": 9, "atid": 2, "metric": "points", "value": -5, "ts": ANCHORS[0]}]
        yield self.psd.post("/v1/points", cancel)
        self.model.points += cancel
        counts = [{"name": rng.choice(NAMES), "value": rng.randrange(1, 100), "ts": self.instant()} for _ in range(80)]
        status, body, _ = yield self.psd.post("/v1/counts", counts)
        self.assertEqual((status, body), (200, {"written": 80, "duplicates": 0}))
        self.model.counts += counts

    @defer.inlineCallbacks
    def form(self, path: str, fields: dict):
        """(status, decoded body) of one of the original psd's form routes."""
        status, body, _ = yield self.psd.request(
            "POST", path, raw=urlencode(fields).encode(),
            headers={"Content-Type": ["application/x-www-form-urlencoded"]})
        return status, body

    @defer.inlineCallbacks
    def ok(self, method: str, path: str, body=None):
        status, answer, _ = yield self.psd.request(method, path, body)
        self.assertEqual(status, 200, (path, body, answer))
        return answer

    @defer.inlineCallbacks
    def test_sums_with_offsets(self):
        for _ in range(40):
            start, end = self.window()
            uids = self.rng.sample(UIDS + [9], 4)
            metrics = self.rng.sample(METRICS, self.rng.randrange(1, 3))
            atid = self.rng.choice([0, 0] + TYPES[1:])
            offsets = {uid: self.rng.choice([0, 3600, -5 * 3600, 20700, 45900, self.rng.randrange(-86400, 86400)])
                       for uid in uids if self.rng.random() < 0.6}
            answer = yield self.ok("POST", "/v1/sum", {"uids": uids, "metrics": metrics, "atid": atid, "from": start,
                                                       "to": end, "offsets": {str(u): o for u, o in offsets.items()}})
            expected = {str(uid): {m: self.model.sum(uid, m, start + offsets.get(uid, 0), end + offsets.get(uid, 0),
                                                     atid) for m in metrics} for uid in uids}
            self.assertEqual(answer["results"], expected, (start, end, atid, offsets))
            plain = yield self.ok("GET", f"/v1/sum?uids={','.join(map(str, uids))}&metrics={','.join(metrics)}"
                                         f"&atid={atid}&from={start}&to={end}")
            self.assertEqual(plain["results"], {str(uid): {m: self.model.sum(uid, m, start, end, atid) for m in metrics}
                                                for uid in uids})

    @defer.inlineCallbacks
    def test_series_in_many_zones(self):
        for _ in range(40):
            step = self.rng.choice(list(SERIES_REACH))
            reach = SERIES_REACH[step]
            if self.rng.random() < 0.5:
                zone, change = self.rng.choice(SHIFTS)
                start = change - self.rng.randrange(1, reach // 2)
            else:
                zone, start = self.rng.choice(ZONES), self.instant()
            end = start + self.rng.randrange(reach)
            uid, metric = self.rng.choice(UIDS), self.rng.choice(METRICS)
            answer = yield self.ok("GET", f"/v1/series?uid={uid}&metric={metric}&step={step}&tz={zone}"
                                          f"&from={start}&to={end}")
            buckets = model_buckets(start, end, step, ZoneInfo(zone))
            expected = [{"start": first, "end": last, "value": self.model.sum(uid, metric, first, last)}
                        for first, last in buckets]
            self.assertEqual(answer["series"], expected, (step, zone, start, end))

    @defer.inlineCallbacks
    def test_leaderboards(self):
        for _ in range(25):
            start, end = self.window()
            compare_to = self.rng.choice([None, start, start + (end - start) // 2])
            uids = self.rng.sample(UIDS, self.rng.randrange(1, len(UIDS) + 1))
            offsets = {uid: self.rng.choice([0, 3600, -3600, 19800]) for uid in uids if self.rng.random() < 0.5}
            limit = self.rng.randrange(1, len(uids) + 1)
            metric = self.rng.choice(METRICS)
            body = {"uids": uids, "metric": metric, "from": start, "to": end, "limit": limit,
                    "offsets": {str(u): o for u, o in offsets.items()}}
            if compare_to is not None:
                body["compare_to"] = compare_to
            answer = yield self.ok("POST", "/v1/leaderboard", body)

            def values(until):
                return {uid: self.model.sum(uid, metric, start + offsets.get(uid, 0), until + offsets.get(uid, 0))
                        for uid in uids}

            now = standings(values(end))
            then = {s.uid: s for s in standings(values(compare_to))} if compare_to is not None else {}
            expected = []
            for s in now[:limit]:
                entry = {"rank": s.rank, "uid": str(s.uid), "value": s.value}
                if compare_to is not None:
                    entry.update(previous_rank=then[s.uid].rank, previous_value=then[s.uid].value)
                expected.append(entry)
            self.assertEqual(answer, {"entries": expected, "total": len(uids)}, body)

    @defer.inlineCallbacks
    def test_original_routes_and_atids(self):
        for _ in range(30):
            start, end = self.window()
            if self.rng.random() < 0.2:
                start, end = ANCHORS[0], ANCHORS[0]  # where uid 9's types cancel
            uids = self.rng.sample(UIDS + [9], 4)
            atid = self.rng.choice([0, 0, 1, 2, 3])
            path_atid = self.rng.choice(["all", "0"]) if not atid else str(atid)
            things = self.rng.sample(METRICS, self.rng.randrange(1, 3))
            ids = ",".join(map(str, uids))
            model = self.model
            status, answer = yield self.form(f"/v1/mumt_query/{path_atid}/{start}/{end}", {"ids": ids,
                                                                                           "things": ",".join(things)})
            expected = {str(uid): {**{m: model.sum(uid, m, start, end, atid) for m in things},
                                   "_atids": model.atids(uid, things, start, end, atid)} for uid in uids}
            self.assertEqual((status, answer), (200, {"data": expected}), (start, end, atid, things))
            offsets = [self.rng.choice([0, 3600, -19800]) for _ in uids]
            status, answer = yield self.form(f"/v2/mumt_query/{path_atid}/{start}/{end}",
                                             {"ids": ids, "things": ",".join(things),
                                              "offsets": ",".join(map(str, offsets))})
            shifted = {}
            for uid, offset in zip(uids, offsets):
                low, high = start + offset, end + offset
                entry = {**{m: model.sum(uid, m, low, high, atid) for m in things},
                         "_atids": model.atids(uid, things, low, high, atid)}
                if entry["_atids"] and entry.get("points", 1) != 0:
                    shifted[str(uid)] = entry
            self.assertEqual((status, answer), (200, {"data": shifted}), (start, end, atid, things, offsets))
            thing = things[0]
            status, answer = yield self.form(f"/v1/mu_query/{thing}/{path_atid}/{start}/{end}", {"ids": ids})
            self.assertEqual((status, answer), (200, {
                "atids": {str(uid): model.atids(uid, [thing], start, end, atid) for uid in uids},
                "values": {str(uid): model.sum(uid, thing, start, end, atid) for uid in uids}}))
            status, answer = yield self.form(f"/v1/query_ids/{thing}/{path_atid}/{start}/{end}", {"ids": ids})
            self.assertEqual((status, answer), (200, {str(uid): model.sum(uid, thing, start, end, atid) for uid in uids}))
            uid = uids[0]
            status, answer, _ = yield self.psd.get(f"/v1/query/{uid}/{thing}/{path_atid}/{start}/{end}")
            self.assertEqual((status, answer), (200, model.sum(uid, thing, start, end, atid)))

    @defer.inlineCallbacks
    def test_counts(self):
        for _ in range(30):
            start, end = self.window()
            names = self.rng.sample(NAMES, self.rng.randrange(1, len(NAMES) + 1))
            answer = yield self.ok("GET", f"/v1/count?names={','.join(names)}&from={start}&to={end}")
            self.assertEqual(answer, {"results": {n: self.model.count(n, start, end) for n in names}})
            name = names[0]
            status, total, _ = yield self.psd.get(f"/v1/readcount/{name}/{start}/{end}")
            self.assertEqual((status, total), (200, self.model.count(name, start, end)))
            status, by_id = yield self.form(f"/v1/readcount_with_ids/clicks/{start}/{end}", {"ids": "1,2,3"})
            self.assertEqual((status, by_id), (200, {i: self.model.count(f"clicks_{i}", start, end)
                                                     for i in ("1", "2", "3")}))


