"""The fault tests' oracle: what Redis must hold after a set of acknowledged points.

lost = sum of max(0, expected - observed) and doubled = sum of
max(0, observed - expected), per (hash, field) at every level, for the
time-bucket hashes; levels must agree (a field equals the sum of its children).
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.internet import defer, reactor, task

from psd.buckets import point_fields

METRICS = ("points", "steps")


def random_requests(rng: random.Random, count: int, size: int, uids: int = 50, start: int = 1458061005,
                    span: int = 3 * 86400) -> list[tuple[str, list[dict]]]:
    """(idempotency key, points) per request."""
    return [(f"req-{rng.random():.16f}-{i}",
             [{"uid": rng.randrange(uids), "atid": rng.randrange(4), "metric": rng.choice(METRICS),
               "value": rng.randrange(1, 100), "ts": start + rng.randrange(span)} for _ in range(size)])
            for i in range(count)]


def expected_fields(points: list[dict], prefix: str = "hz") -> Counter:
    expected: Counter = Counter()
    for p in points:
        for atid in ({p["atid"], 0}):
            for bucket, field in point_fields(p["ts"]):
                expected[(f"{prefix}:{p['uid']}:{atid}:{p['metric']}:{bucket}", field)] += p["value"]
    return expected


@defer.inlineCallbacks
def observed_fields(store, prefix: str = "hz") -> Counter:
    """Every field of every time-bucket hash (SCAN, then HGETALLs 200 at a time)."""
    observed: Counter = Counter()
    cursor, keys = "0", []
    while True:
        cursor, batch = yield store.command("SCAN", cursor, "MATCH", f"{prefix}:[0-9]*", "COUNT", 5000)
        keys += batch
        if cursor == "0":
            break
    for first in range(0, len(keys), 200):
        chunk = keys[first:first + 200]
        replies = yield defer.gatherResults([store.command("HGETALL", key) for key in chunk])
        for key, flat in zip(chunk, replies):
            for field, value in zip(flat[::2], flat[1::2]):
                observed[(key, field)] = int(value)
    return observed


def compare(expected: Counter, observed: Counter) -> dict:
    lost = sum(max(0, expected[k] - observed.get(k, 0)) for k in expected)
    doubled = sum(max(0, observed[k] - expected.get(k, 0)) for k in observed)
    children: Counter = Counter()
    for (key, field), value in observed.items():
        parent_bucket = key.rsplit(":", 1)[1]
        if len(parent_bucket) > 4:
            children[(key[: -len(parent_bucket)] + parent_bucket[:-2], parent_bucket)] += value
    disagreeing = sum(1 for k, v in children.items() if observed.get(k, 0) != v)
    return {"lost": lost, "doubled": doubled, "levels_disagreeing": disagreeing,
            "expected_total": sum(v for (key, field), v in expected.items() if len(field) == 6)}


@defer.inlineCallbacks
def post_until_acknowledged(psd, key: str, points: list[dict], stats: Counter, deadline: float = 120.0):
    """POST with an Idempotency-Key until a 200, as a careful client does; count the answers."""
    started = reactor.seconds()
    while True:
        try:
            status, body, response = yield psd.post("/v1/points", points, headers={"Idempotency-Key": key})
        except Exception:
            status = "connection error"
        stats[status] += 1
        if status == 200:
            return body
        if status == 503:
            stats["retry_after"] += bool(response.headers.getRawHeaders("retry-after"))
        if reactor.seconds() - started > deadline:
            raise RuntimeError(f"request {key} not acknowledged in {deadline}s: last {status}")
        yield task.deferLater(reactor, 0.05, lambda: None)


@defer.inlineCallbacks
def run_clients(psd, requests: list, concurrency: int, stats: Counter, send=post_until_acknowledged):
    """Send every request, ``concurrency`` at a time, each until acknowledged."""
    pending = iter(requests)

    @defer.inlineCallbacks
    def client():
        for key, points in pending:
            yield send(psd, key, points, stats)

    yield defer.gatherResults([client() for _ in range(concurrency)], consumeErrors=True)


@defer.inlineCallbacks
def assert_exact(testcase, store, points: list[dict], name: str, extra: str = ""):
    """Compare Redis with the oracle, print the figures, fail unless 0 lost / 0 doubled / levels agree."""
    observed = yield observed_fields(store)
    result = compare(expected_fields(points), observed)
    print(f"\n[{name}] {result}; {extra}")
    testcase.assertEqual((result["lost"], result["doubled"], result["levels_disagreeing"]), (0, 0, 0))
    return result
