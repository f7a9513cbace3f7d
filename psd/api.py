"""The HTTP API: a Klein app over the injected writer, reader and store.

Every answer is JSON.  Client mistakes are 4xx with ``{"error": ...}``; Redis
trouble is 503 (with Retry-After when psd is shedding load); an internal
error is a 500 with no detail, logged with its traceback on our side only.
"""

from __future__ import annotations

import functools
import json
from typing import Callable, Optional

import orjson
from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import parse_qs
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from psd import compat, openapi
from psd.errors import InvalidInput, Overloaded, RejectedByStore, StoreUnavailable
from psd.leaderboard import board_json
from psd.model import WriteUnit, content_digest, group_parts
from psd.reader import SumRequest
from psd.routes import FORM_BODY, JSON_BODY, OPEN, READ, WRITE, Tokens, declared
from psd.series import MAX_BUCKETS, series_planner, series_sums, time_zone
from psd.validation import (MAX_ID, MAX_TS, as_batch, decode_json, integer, integer_text, key_part,
                            metric_name, parse_count, parse_point)

log = Logger()


def json_route(handler: Callable) -> Callable:
    """Run a handler that returns a dict (or (status, dict)), map errors to JSON answers.

    Plain callbacks rather than a generator: this wraps every write request,
    and a handler that answers at once is answered without a Deferred.
    Who may call a route is declared on it with psd.routes.declared.
    """

    @functools.wraps(handler)
    def route(self, request, *args, **kwargs):
        request.setHeader(b"Content-Type", b"application/json")
        try:
            result = handler(self, request, *args, **kwargs)
        except Exception:
            return _answer_error(request, Failure())
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(lambda value: _answer_result(request, value),
                                       lambda failure: _answer_error(request, failure))
        return _answer_result(request, result)

    return route


def _answer_result(request, result) -> bytes:
    status, body = result if isinstance(result, tuple) else (200, result)
    return _answer(request, status, body)


def _answer_error(request, failure: Failure) -> Optional[bytes]:
    error = failure.value
    if isinstance(error, InvalidInput):
        body = {"error": error.message}
        if error.index is not None:
            body["index"] = error.index
        return _answer(request, 400, body)
    if isinstance(error, Overloaded):
        request.setHeader(b"Retry-After", b"1")
        return _answer(request, 503, {"error": f"overloaded: {error}"})
    if isinstance(error, StoreUnavailable):
        request.setHeader(b"Retry-After", b"1")
        return _answer(request, 503, {"error": f"store unavailable: {error}"})
    if isinstance(error, RejectedByStore):
        return _answer(request, 422, {"error": f"the store refused the data, nothing was written: {error}"})
    if isinstance(error, defer.CancelledError):  # Klein cancels when the client went away: nobody to answer
        return None
    log.failure("internal error on {method} {path}", failure=failure, method=request.method, path=request.path)
    return _answer(request, 500, {"error": "internal error"})


def _answer(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    if isinstance(body, bytes):  # a plain-text answer (the original psd's routes); the handler set its type
        content = body
    else:
        content = _json_bytes(body)
    request.setHeader(b"Content-Length", b"%d" % len(content))  # one write, no chunked framing
    return content


def _json_bytes(body) -> bytes:
    try:
        return orjson.dumps(body)  # ~5x faster than json: this is every write's answer
    except TypeError:  # integers beyond 64 bits (exact sums can be), keys that are not strings
        return json.dumps(body, separators=(",", ":")).encode()


def split_list(text: Optional[str], field: str) -> list[str]:
    if not text:
        raise InvalidInput(f"{field} is required")
    return text.split(",")


#: The form (or query) fields of the original psd's routes that take a list of user ids.
_IDS = frozenset({"ids"})


class API:
    app = Klein()

    def __init__(self, writer, reader, store, metrics: frozenset, max_points: int = 10000,
                 max_uids: int = 10000, health_checks: Optional[dict] = None, tokens: Optional[Tokens] = None):
        self._writer = writer
        self._reader = reader
        self._store = store
        self._metrics = metrics
        self._max_points = max_points
        self._max_uids = max_uids
        #: name -> callable returning (ok, details), e.g. the NSQ consumer's status
        self._health_checks = health_checks or {}
        #: read by each route's @declared scope
        self.tokens = tokens or Tokens()

    def resource(self):
        return self.app.resource()

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        request.setHeader(b"Content-Type", b"application/json")
        return _answer(request, 404, {"error": "no such route"})

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request, failure):
        request.setHeader(b"Content-Type", b"application/json")
        allowed = failure.value.valid_methods or []
        request.setHeader(b"Allow", ", ".join(sorted(allowed)).encode())
        return _answer(request, 405, {"error": "method not allowed on this route"})

    @app.handle_errors(RequestRedirect)
    def _not_canonical(self, request, failure):
        """``/v1//points``: werkzeug would answer an HTML 308 to a URL built from the Host header."""
        request.setHeader(b"Content-Type", b"application/json")
        return _answer(request, 404, {"error": "no such route (paths have no empty segments)"})

    @app.route("/health/ping", methods=["GET"])
    @declared(OPEN)
    @json_route
    def ping(self, request):
        return {"pong": "OK"}

    @app.route("/health", methods=["GET"])
    @declared(OPEN)
    @json_route
    @defer.inlineCallbacks
    def health(self, request):
        body, ok = {"status": "ok"}, True
        try:
            yield self._store.ping()
            body["redis"] = "ok"
        except StoreUnavailable as e:
            body["redis"], ok = f"unavailable: {e}", False
        for name, check in self._health_checks.items():
            check_ok, body[name] = check()
            ok = ok and check_ok
        if not ok:
            body["status"] = "unavailable"
        if not self.tokens.allows(READ, request):  # a load balancer's probe: the status, no details
            body = {"status": body["status"]}
        return (200 if ok else 503), body

    @app.route("/v1/points", methods=["POST"])
    @declared(WRITE, JSON_BODY)
    @json_route
    def write_points(self, request):
        items = as_batch(decode_json(request.content.read()), self._max_points)
        keyed = [parse_point(item, self._metrics, index) for index, item in enumerate(items)]
        return self._submit(request, keyed)

    def _idempotency_key(self, request) -> Optional[str]:
        header = request.getHeader(b"Idempotency-Key")
        if header is None:
            return None
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("Idempotency-Key must be UTF-8") from None
        return "h:" + key_part(text, "Idempotency-Key")

    @app.route("/v1/sum", methods=["GET"])
    @declared(READ, fields=frozenset({"uids", "metrics", "atid", "from", "to"}))
    @json_route
    def sum_get(self, request):
        args = _text_args(request)
        query = {
            "uids": [integer_text(u, "uids", 0, MAX_ID) for u in split_list(args.get("uids"), "uids")],
            "metrics": split_list(args.get("metrics"), "metrics"),
            "atid": integer_text(args.get("atid", "0"), "atid", 0, MAX_ID),
            "from": integer_text(args.get("from"), "from", 0, MAX_TS),
            "to": integer_text(args.get("to"), "to", 0, MAX_TS),
        }
        return self._sum(query)

    @app.route("/v1/sum", methods=["POST"])
    @declared(READ, JSON_BODY)
    @json_route
    def sum_post(self, request):
        return self._sum(_known_fields(_json_object(request), self._SUM_FIELDS))

    _SUM_FIELDS = frozenset({"uids", "metrics", "atid", "from", "to", "offsets"})

    @defer.inlineCallbacks
    def _sum(self, query: dict):
        uids = self._uid_list(query.get("uids"))
        metrics = query.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            raise InvalidInput("metrics must be a non-empty list")
        metrics = list(dict.fromkeys(metric_name(metric, self._metrics) for metric in metrics))
        atid = integer(query, "atid", 0, MAX_ID, default=0)
        start = integer(query, "from", 0, MAX_TS)
        end = integer(query, "to", 0, MAX_TS)
        if start > end:
            raise InvalidInput("from must not be after to")
        offsets = self._offsets(query.get("offsets", {}))
        sums = iter((yield self._reader.user_sums([(uid, atid) for uid in uids], metrics, start, end, offsets)))
        results = {str(uid): {metric: next(sums) for metric in metrics} for uid in uids}
        return {"from": start, "to": end, "atid": atid, "results": results}

    @staticmethod
    def _offsets(offsets) -> dict[int, int]:
        """Per-user shifts of the window, ``{"<uid>": seconds}`` (a user's local day)."""
        if not isinstance(offsets, dict):
            raise InvalidInput("offsets must be an object of uid -> seconds")
        shifted = {}
        for uid, offset in offsets.items():
            shifted[integer_text(uid, "offsets uid", 0, MAX_ID)] = integer(
                {"offset": offset}, "offset", -MAX_TS, MAX_TS)
        return shifted

    # ---- Queries: series, leaderboards, global counts, the original psd's routes, OpenAPI ----
    # Parsing and answer shapes live in psd.series, psd.leaderboard and psd.compat; these
    # handlers only read request fields, call the reader or writer, and hand back the answer.

    max_series_buckets = MAX_BUCKETS
    _BOARD_FIELDS = frozenset({"uids", "metric", "atid", "from", "to", "offsets", "limit", "compare_to"})

    @app.route("/v1/series", methods=["GET"])
    @declared(READ, fields=frozenset({"uid", "metric", "atid", "from", "to", "step", "tz"}))
    @json_route
    @defer.inlineCallbacks
    def series(self, request):
        args = _text_args(request)
        uid = integer_text(args.get("uid"), "uid", 0, MAX_ID)
        metric = metric_name(args.get("metric"), self._metrics)
        atid = integer_text(args.get("atid", "0"), "atid", 0, MAX_ID)
        start = integer_text(args.get("from"), "from", 0, MAX_TS)
        end = integer_text(args.get("to"), "to", 0, MAX_TS)
        tz = args.get("tz", "UTC")
        plan, planning = series_planner(start, end, args.get("step"), time_zone(tz), self.max_series_buckets)
        yield self._reader.sliced(planning)
        self._reader.budget().charge(len(plan.hashes))  # one HGETALL per distinct hash
        fetched = yield self._reader.fetch_buckets(uid, atid, metric, plan.hashes)
        values = []
        yield self._reader.sliced(series_sums(plan, fetched, values), len(plan.buckets))
        return {"step": args["step"], "tz": tz,
                "series": [{"start": b.start, "end": b.end, "value": v} for b, v in zip(plan.buckets, values)]}

    @app.route("/v1/leaderboard", methods=["POST"])
    @declared(READ, JSON_BODY)
    @json_route
    @defer.inlineCallbacks
    def leaderboard(self, request):
        body = _known_fields(_json_object(request), self._BOARD_FIELDS)
        uids = self._uid_list(body.get("uids"))
        metric = metric_name(body.get("metric"), self._metrics)
        atid = integer(body, "atid", 0, MAX_ID, default=0)
        start = integer(body, "from", 0, MAX_TS)
        end = integer(body, "to", 0, MAX_TS)
        if start > end:
            raise InvalidInput("from must not be after to")
        limit = integer(body, "limit", 1, self._max_uids, default=len(uids))
        compare_to = integer(body, "compare_to", start, MAX_TS) if "compare_to" in body else None
        offsets = self._offsets(body.get("offsets", {}))
        users = [(uid, atid) for uid in uids]
        ends = [end] if compare_to is None else [end, compare_to]
        values = yield self._reader.user_sums_until(users, [metric], start, ends, offsets)
        now = dict(zip(uids, values[0]))
        then = dict(zip(uids, values[1])) if compare_to is not None else None
        return board_json(now, then, limit)  # bytes: json_route sends them as they are

    @app.route("/v1/counts", methods=["POST"])
    @declared(WRITE, JSON_BODY)
    @json_route
    def write_counts(self, request):
        items = as_batch(decode_json(request.content.read()), self._max_points, "counts")
        return self._submit(request, [parse_count(item, index) for index, item in enumerate(items)])

    @app.route("/v1/count", methods=["GET"])
    @declared(READ, fields=frozenset({"names", "from", "to"}))
    @json_route
    @defer.inlineCallbacks
    def read_counts(self, request):
        args = _text_args(request)
        names = list(dict.fromkeys(split_list(args.get("names"), "names")))
        if len(names) > self._max_uids:
            raise InvalidInput(f"at most {self._max_uids} names per query")
        names = [compat.count_name(name) for name in names]
        start = integer_text(args.get("from"), "from", 0, MAX_TS)
        end = integer_text(args.get("to"), "to", 0, MAX_TS)
        if start > end:
            raise InvalidInput("from must not be after to")
        sums = yield self._reader.count_sums(names, start, end)
        return {"results": dict(zip(names, sums))}

    @app.route("/v1/write", methods=["POST"])
    @declared(WRITE, JSON_BODY)
    @json_route
    @defer.inlineCallbacks
    def compat_write(self, request):
        point = compat.write_point(decode_json(request.content.read()), self._metrics)
        yield self._submit(request, [(None, point)])
        return _plain(request, "ok")

    @app.route("/v1/query/<uid>/<thing>/<atid>/<start_ts>/<end_ts>", methods=["GET"])
    @declared(READ)
    @json_route
    @defer.inlineCallbacks
    def compat_query(self, request, uid, thing, atid, start_ts, end_ts):
        uid = integer_text(uid, "uid", 0, MAX_ID)
        start, end = compat.window(start_ts, end_ts)
        [total] = yield self._reader.sums([SumRequest(uid, compat.atid(atid), compat.thing(thing, self._metrics),
                                                      start, end)])
        return _plain(request, str(total))

    @app.route("/v1/query_ids/<thing>/<atid>/<start_ts>/<end_ts>", methods=["POST"])
    @declared(READ, fields=_IDS)
    @json_route
    @defer.inlineCallbacks
    def compat_query_ids(self, request, thing, atid, start_ts, end_ts):
        uids = compat.ids(_text_args(request).get("ids"), self._max_uids)
        start, end = compat.window(start_ts, end_ts)
        metric, atid = compat.thing(thing, self._metrics), compat.atid(atid)
        sums = yield self._reader.sums([SumRequest(uid, atid, metric, start, end) for uid in uids])
        return _plain(request, _go_json({str(uid): total for uid, total in zip(uids, sums)}))

    @app.route("/v1/mu_query/<thing>/<atid>/<start_ts>/<end_ts>", methods=["POST"])
    @declared(READ, fields=_IDS)
    @json_route
    @defer.inlineCallbacks
    def compat_mu_query(self, request, thing, atid, start_ts, end_ts):
        uids = compat.ids(_text_args(request).get("ids"), self._max_uids)
        metric = compat.thing(thing, self._metrics)
        sums, atids = yield self._sums_with_atids(uids, [metric], compat.atid(atid), *compat.window(start_ts, end_ts))
        return _go_sorted({"values": {str(uid): sums[uid][metric] for uid in uids},
                           "atids": {str(uid): atids[uid] for uid in uids}})

    @app.route("/v1/mumt_query/<atid>/<start_ts>/<end_ts>", methods=["POST"])
    @declared(READ, fields=_IDS | {"things"})
    @json_route
    def compat_mumt_query(self, request, atid, start_ts, end_ts):
        return self._mumt(request, atid, start_ts, end_ts, with_offsets=False)

    @app.route("/v2/mumt_query/<atid>/<start_ts>/<end_ts>", methods=["POST"])
    @declared(READ, fields=_IDS | {"things", "offsets"})
    @json_route
    def compat_mumt_query_v2(self, request, atid, start_ts, end_ts):
        return self._mumt(request, atid, start_ts, end_ts, with_offsets=True)

    @app.route("/v1/readcount/<thing>/<start_ts>/<end_ts>", methods=["GET"])
    @declared(READ)
    @json_route
    @defer.inlineCallbacks
    def compat_readcount(self, request, thing, start_ts, end_ts):
        [total] = yield self._reader.count_sums([compat.count_name(thing)], *compat.window(start_ts, end_ts))
        return _plain(request, str(total))

    @app.route("/v1/readcount_with_ids/<prefix>/<start_ts>/<end_ts>", methods=["POST"])
    @declared(READ, fields=_IDS)
    @json_route
    @defer.inlineCallbacks
    def compat_readcount_with_ids(self, request, prefix, start_ts, end_ts):
        names = compat.count_names(prefix, _text_args(request).get("ids"), self._max_uids)
        sums = yield self._reader.count_sums(list(names.values()), *compat.window(start_ts, end_ts))
        return _plain(request, _go_json(dict(zip(names, sums))))

    @app.route("/openapi.json", methods=["GET"])
    @declared(READ)
    @json_route
    def openapi_document(self, request):
        return openapi.document(sorted(self._metrics), self._max_uids, self.max_series_buckets)

    @defer.inlineCallbacks
    def _mumt(self, request, atid, start_ts, end_ts, with_offsets: bool):
        form = _text_args(request)
        uids = compat.ids(form.get("ids"), self._max_uids)
        metrics = compat.things(form.get("things"), self._metrics)
        shifts = compat.offsets(form.get("offsets"), len(uids)) if with_offsets else [0] * len(uids)
        sums, atids = yield self._sums_with_atids(uids, metrics, compat.atid(atid), *compat.window(start_ts, end_ts),
                                                   dict(zip(uids, shifts)))
        return _go_sorted(compat.mumt_answer(sums, atids, drop_idle=with_offsets))

    @defer.inlineCallbacks
    def _sums_with_atids(self, uids: list, metrics: list, atid: int, start: int, end: int, offsets=None):
        """{uid: {metric: sum}} and {uid: [activity types that contributed]}, as the original answered.

        Round one reads each user's total per metric and her set of activity
        types together; round two reads, for the users with more than one type,
        the sums of all types but one (see compat.atids_to_read).
        """
        offsets, budget = offsets or {}, self._reader.budget()

        def window_sums(pairs, before_send=None):
            """{(uid, atid): [sum per metric]}."""
            d = self._reader.user_sums(pairs, metrics, start, end, offsets, budget, before_send)

            def spread(flat):
                flat = iter(flat)
                return {pair: [next(flat) for _ in metrics] for pair in pairs}

            return d.addCallback(spread)

        members_d = []  # the type sets are read with the totals, once their cost is charged too

        def read_members():
            budget.charge(len(uids) if not atid else 0)
            members_d.append(self._reader.atids_of(uids) if not atid else defer.succeed({}))

        totals = yield window_sums([(uid, atid) for uid in uids], read_members)
        members = yield members_d[0]
        # every user with a type written, also when her all-types total is 0: types can cancel (+5 and -5)
        plans = {uid: compat.atids_to_read(members.get(uid, set()), atid) for uid in uids}
        own = yield window_sums([(uid, a) for uid, (to_read, _) in plans.items() for a in to_read])
        sums, atids = {}, {}
        for uid in uids:
            sums[uid] = dict(zip(metrics, totals[(uid, atid)]))
            if uid in plans:
                to_read, derived = plans[uid]
                atids[uid] = compat.contributing_atids(totals[(uid, atid)], {a: own[(uid, a)] for a in to_read}, derived)
            else:
                atids[uid] = []
        return sums, atids

    def _submit(self, request, keyed: list) -> defer.Deferred:
        """Write (id, Point|Count) pairs as one unit; the answer counts written and duplicates.

        An Idempotency-Key is bound to a digest of the validated items: the same
        key with other content is a 422, not a silent duplicate.
        """
        key = self._idempotency_key(request)
        digest = content_digest(keyed) if key is not None else None
        d = self._writer.submit(WriteUnit(group_parts(keyed, key, digest), atomic=key is not None))
        return d.addCallback(lambda result: {"written": result.written, "duplicates": result.duplicates})

    def _uid_list(self, uids) -> list[int]:
        if not isinstance(uids, list) or not uids:
            raise InvalidInput("uids must be a non-empty list of user ids")
        if len(uids) > self._max_uids:
            raise InvalidInput(f"at most {self._max_uids} uids per query")
        return list(dict.fromkeys(integer({"uids": uid}, "uids", 0, MAX_ID) for uid in uids))


def _text_args(request) -> dict[str, str]:
    """Query-string and form fields (the last value of each; form fields after the query's), as text.

    The form body is parsed here: psd's Site does not parse POST forms (JSON is
    what most routes take), but the original psd's routes send ``ids=1,2``.
    """
    fields = dict(request.args)
    content_type = request.getHeader(b"content-type") or b""
    if request.method == b"POST" and content_type.split(b";")[0].strip().lower() == FORM_TYPE:
        request.content.seek(0)
        fields.update(parse_qs(request.content.read(), 1))  # bytes, as twisted.web parses forms
    try:
        return {k.decode(): v[-1].decode("utf-8") for k, v in fields.items()}
    except UnicodeDecodeError:
        raise InvalidInput("query and form fields must be UTF-8") from None


FORM_TYPE = FORM_BODY


def _json_object(request) -> dict:
    body = decode_json(request.content.read())
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    return body


def _known_fields(body: dict, known: frozenset) -> dict:
    unknown = body.keys() - known
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}")
    return body


def _plain(request, text: str) -> bytes:
    """A text/plain answer, as the original psd's gin ``c.String`` gave."""
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return text.encode()


def _go_sorted(value):
    """Objects with their keys in Go's encoding/json order (sorted), so answers match byte for byte."""
    if isinstance(value, dict):
        return {key: _go_sorted(value[key]) for key in sorted(value)}
    return value


def _go_json(value) -> str:
    return json.dumps(_go_sorted(value), separators=(",", ":"))
