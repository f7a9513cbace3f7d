"""NSQ message bodies -> one WriteUnit.  Pure; raises InvalidInput.

Accepted bodies (JSON):

* a point object as in ``POST /v1/points``, or an array of them;
* the original Go psd's envelope ``{"command": "metric", "metric": {thing,
  uid, atid, aid, value, ts1, ts2}}``.  In pointspaced's worker (jobs/metrics.go
  and persistence's hashzilla ``WritePoint``) such a job is a "diffadd": the
  value is activity ``aid``'s total as of ``ts2`` (``ts1`` is when the activity
  started); psd wrote the difference to what it had for that activity at
  ``ts2``.  Here that is a set-total point at ``ts2``; without ``aid`` it is a
  plain increment at ``ts2`` (or ``ts1`` when only that is given);
* ``{"command": "count", "count": {thing, value, ts}}``, a global counter
  (pointspaced's jobs/count.go; ``name`` is accepted for ``thing``);
* the seed's scripts/enqueue.rb shape ``{"command": "metric", "metric":
  {"steps": 11, "points": 3, "activity_type_id": 3, "timestamp": ..., "user_id":
  1}}``: one message, one point per configured metric named in it.

Items carrying an ``id`` are deduplicated by it; the others by ``unit_key``
(the nsqd address and message ID), so a redelivered message is a no-op.
"""

from __future__ import annotations

from typing import Any

from psd.errors import InvalidInput
from psd.model import WriteUnit, group_parts
from psd.validation import MAX_TS, as_batch, decode_json, integer, parse_count, parse_point

MAX_ITEMS_PER_MESSAGE = 1000
GO_JOB_FIELDS = frozenset({"thing", "uid", "atid", "aid", "value", "ts1", "ts2"})
ENQUEUE_FIELDS = frozenset({"user_id", "activity_type_id", "timestamp"})


def parse_message(body: bytes, metrics: frozenset, unit_key: str,
                  limit: int = MAX_ITEMS_PER_MESSAGE) -> WriteUnit:
    """Decode and validate one message body; nothing half-valid gets through."""
    obj = decode_json(body)
    if isinstance(obj, dict) and "command" in obj:
        items = _envelope(obj, metrics)
    else:
        items = [parse_point(item, metrics, index) for index, item in enumerate(as_batch(obj, limit))]
    identified = [item for item in items if item[0] is not None]
    if not identified:  # the common case
        return WriteUnit(group_parts(items, unit_key=unit_key))
    anonymous = [item for item in items if item[0] is None]
    parts = group_parts(identified)
    if anonymous:
        parts += group_parts(anonymous, unit_key=unit_key)
    return WriteUnit(parts=parts)


def _envelope(obj: dict, metrics: frozenset) -> list:
    command = obj["command"]
    if command not in ("metric", "count"):
        raise InvalidInput(f"unknown command {command!r}: expected 'metric' or 'count'")
    extra = obj.keys() - {"command", command}
    if extra:
        raise InvalidInput(f"unknown field {sorted(extra)[0]!r} in a {command} envelope")
    job = obj.get(command)
    if not isinstance(job, dict):
        raise InvalidInput(f"{command} must be a JSON object")
    if command == "count":
        return [_count_job(job)]
    if "thing" in job:
        return [_go_metric_job(job, metrics)]
    return _enqueue_job(job, metrics)


def _count_job(job: dict) -> tuple:
    if "thing" in job and "name" in job:
        raise InvalidInput("a count carries thing or name, not both")
    fields = dict(job)
    if "thing" in fields:
        fields["name"] = fields.pop("thing")
    return parse_count(fields)


def _go_metric_job(job: dict, metrics: frozenset) -> tuple:
    unknown = job.keys() - GO_JOB_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r} in a metric job")
    if "ts2" in job:
        ts = integer(job, "ts2", 0, MAX_TS)
        if "ts1" in job and integer(job, "ts1", 0, MAX_TS) > ts:
            raise InvalidInput("ts1 must not be after ts2")
    else:
        ts = integer(job, "ts1", 0, MAX_TS)
    point = {"uid": job.get("uid"), "atid": job.get("atid", 0), "metric": job["thing"], "ts": ts}
    if "aid" in job:
        point.update(aid=job["aid"], total=job.get("value"))
    else:
        point["value"] = job.get("value")
    return parse_point(point, metrics)


def _enqueue_job(job: dict, metrics: frozenset) -> list:
    unknown = job.keys() - ENQUEUE_FIELDS - metrics
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r} in a metric job")
    named = sorted(job.keys() & metrics)
    if not named:
        raise InvalidInput(f"a metric job names none of {', '.join(sorted(metrics))}")
    base: dict[str, Any] = {"uid": job.get("user_id"), "atid": job.get("activity_type_id", 0),
                            "ts": job.get("timestamp")}
    return [parse_point({**base, "metric": metric, "value": job[metric]}, metrics, index)
            for index, metric in enumerate(named)]
