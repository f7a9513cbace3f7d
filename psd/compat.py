"""The original Go psd's HTTP surface (pointspaced): its parameters and answer shapes.

Services written against pointspaced keep working: same routes, path
parameters, form fields and JSON shapes.  The data lives in psd's own layout;
what differs from the original is listed in docs/queries.md.  Pure code, no I/O.
"""

from __future__ import annotations

from typing import Any, Optional

from psd.errors import InvalidInput
from psd.model import Point
from psd.validation import COUNT_NAME, MAX_ID, MAX_TS, MAX_VALUE, integer, integer_text

WRITE_FIELDS = frozenset({"thing", "uid", "atid", "aid", "value", "ts1", "ts2"})


def atid(text: str) -> int:
    """The ``:atid`` path segment: ``all`` (or 0) is every activity type."""
    return 0 if text == "all" else integer_text(text, "atid", 0, MAX_ID)


def window(start_text: str, end_text: str) -> tuple[int, int]:
    """The ``:start_ts/:end_ts`` path segments, inclusive."""
    start = integer_text(start_text, "start_ts", 0, MAX_TS)
    end = integer_text(end_text, "end_ts", 0, MAX_TS)
    if start > end:
        raise InvalidInput("start_ts must not be after end_ts")
    return start, end


def thing(text: str, metrics: frozenset) -> str:
    if text not in metrics:
        raise InvalidInput(f"thing must be one of {', '.join(sorted(metrics))}")
    return text


def things(text: Optional[str], metrics: frozenset) -> list[str]:
    """The ``things`` form field: ``steps,points``."""
    if not text:
        raise InvalidInput("things is required (a comma-separated list)")
    return list(dict.fromkeys(thing(name, metrics) for name in text.split(",")))


def ids(text: Optional[str], limit: int) -> list[int]:
    """The ``ids`` form field: ``1,2,3`` (user ids), duplicates dropped."""
    if not text:
        raise InvalidInput("ids is required (a comma-separated list)")
    parts = text.split(",")
    if len(parts) > limit:
        raise InvalidInput(f"at most {limit} ids per query")
    return list(dict.fromkeys(integer_text(part, "ids", 0, MAX_ID) for part in parts))


def offsets(text: Optional[str], count: int) -> list[int]:
    """The v2 ``offsets`` form field: one shift in seconds per id, in the order of ``ids``.

    Absent or empty means no shift for anyone.
    """
    if not text:
        return [0] * count
    parts = text.split(",")
    if len(parts) != count:
        raise InvalidInput(f"offsets must list one value per id ({count}), got {len(parts)}")
    return [integer_text(part, "offsets", -MAX_TS, MAX_TS) for part in parts]


def count_names(prefix: str, id_text: Optional[str], limit: int) -> dict[str, str]:
    """``readcount_with_ids``: id -> the counter it reads, ``{prefix}_{id}``."""
    if not id_text:
        raise InvalidInput("ids is required (a comma-separated list)")
    parts = list(dict.fromkeys(id_text.split(",")))
    if len(parts) > limit:
        raise InvalidInput(f"at most {limit} ids per query")
    names = {}
    for part in parts:
        name = f"{prefix}_{part}"
        if not part or not COUNT_NAME.match(name):
            raise InvalidInput("prefix_id must be 2 to 64 characters of A-Z a-z 0-9 _ . -")
        names[part] = name
    return names


def count_name(text: str) -> str:
    """A global counter's name (the original's ``thing`` of a count)."""
    if not COUNT_NAME.match(text):
        raise InvalidInput("a count name must be 2 to 64 characters of A-Z a-z 0-9 _ . -")
    return text


def write_point(body: Any, metrics: frozenset) -> Point:
    """``POST /v1/write``: the activity ``aid`` has the total ``value`` as of ``ts2``.

    That is a set-total write: psd adds the difference to the last total it
    saw for (uid, aid, thing) at ts2, so a re-sent total changes nothing.
    ``ts1`` (when the activity started) is checked but not needed to do that.
    """
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    unknown = body.keys() - WRITE_FIELDS
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}")
    metric = body.get("thing")
    if type(metric) is not str:
        raise InvalidInput("thing is required")
    uid = integer(body, "uid", 0, MAX_ID)
    ts2 = integer(body, "ts2", 0, MAX_TS)
    if integer(body, "ts1", 0, MAX_TS, default=ts2) > ts2:
        raise InvalidInput("ts1 must not be after ts2")
    return Point(uid, integer(body, "atid", 0, MAX_ID, default=0), thing(metric, metrics), 0, ts2,
                 aid=integer(body, "aid", 0, MAX_ID, default=0), total=integer(body, "value", 0, MAX_VALUE))


def atids_to_read(members: set[int], atid_filter: int) -> tuple[list[int], Optional[int]]:
    """Which activity types need sums of their own to tell which ones contributed.

    Every point counts for its own type and for 0, so a user's total is the sum
    over the types she has written: one of them (0 itself when she wrote
    untyped points) is derived by subtraction and costs no read.  With a filter
    the only candidate is the filter.
    """
    if atid_filter:
        return [], atid_filter
    if not members:
        return [], None
    derived = 0 if 0 in members else max(members)
    return sorted(member for member in members if member != derived), derived


def contributing_atids(totals: list[int], own_sums: dict[int, list[int]], derived: Optional[int]) -> list[int]:
    """The activity types whose sum is not zero for some thing, sorted.

    ``totals`` and each ``own_sums[atid]`` hold one sum per thing, in the same order.
    """
    result = [member for member, sums in own_sums.items() if any(sums)]
    if derived is not None:
        rest = [total - sum(sums[i] for sums in own_sums.values()) for i, total in enumerate(totals)]
        if any(rest):
            result.append(derived)
    return sorted(result)


def mumt_answer(sums: dict[int, dict[str, int]], atids: dict[int, list[int]], drop_idle: bool) -> dict:
    """``{"data": {"<uid>": {"<thing>": n, ..., "_atids": [...]}}}``.

    ``drop_idle`` is the v2 route's behaviour: users with no contributing
    activity type, or with 0 points when points are asked for, are left out.
    """
    data = {}
    for uid, by_thing in sums.items():
        if drop_idle and (not atids[uid] or by_thing.get("points", 1) == 0):
            continue
        data[str(uid)] = {**by_thing, "_atids": atids[uid]}
    return {"data": data}
