"""The HTTP API: a Klein app over the injected writer, reader and store.

Every answer is JSON.  Client mistakes are 4xx with ``{"error": ...}``; Redis
trouble is 503 (with Retry-After when psd is shedding load); an internal
error is a 500 with no detail, logged with its traceback on our side only.
"""

from __future__ import annotations

import functools
import json
from typing import Callable, Optional

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed, NotFound

from psd.errors import InvalidInput, Overloaded, RejectedByStore, StoreUnavailable
from psd.model import WriteUnit, group_parts
from psd.reader import SumRequest
from psd.validation import (MAX_ID, MAX_TS, as_batch, decode_json, integer, integer_text, key_part, metric_name,
                            parse_point)

log = Logger()


def json_route(handler: Callable) -> Callable:
    """Run a handler that returns a dict (or (status, dict)), map errors to JSON answers.

    Plain callbacks rather than a generator: this wraps every write request,
    and a handler that answers at once is answered without a Deferred.
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
    content = json.dumps(body, separators=(",", ":")).encode()
    request.setHeader(b"Content-Length", b"%d" % len(content))
    return content


def split_list(text: Optional[str], field: str) -> list[str]:
    if not text:
        raise InvalidInput(f"{field} is required")
    return text.split(",")


#: The routes that change data: guarded by ``[http] token`` when one is set.
WRITE_ROUTES = frozenset({b"/v1/points", b"/v1/counts", b"/v1/write"})


def is_write(method: bytes, path: bytes) -> bool:
    return method == b"POST" and path.rstrip(b"/") in WRITE_ROUTES


class API:
    app = Klein()

    def __init__(self, writer, reader, store, metrics: frozenset, max_points: int = 10000,
                 max_uids: int = 10000, health_checks: Optional[dict] = None):
        self._writer = writer
        self._reader = reader
        self._store = store
        self._metrics = metrics
        self._max_points = max_points
        self._max_uids = max_uids
        #: name -> callable returning (ok, details), e.g. the NSQ consumer's status
        self._health_checks = health_checks or {}

    def resource(self):
        return self.app.resource()

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        request.setHeader(b"Content-Type", b"application/json")
        return _answer(request, 404, {"error": "no such route"})

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request, failure):
        request.setHeader(b"Content-Type", b"application/json")
        return _answer(request, 405, {"error": "method not allowed on this route"})

    @app.route("/health/ping", methods=["GET"])
    @json_route
    def ping(self, request):
        return {"pong": "OK"}

    @app.route("/health", methods=["GET"])
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
        return (200 if ok else 503), body

    @app.route("/v1/points", methods=["POST"])
    @json_route
    def write_points(self, request):
        items = as_batch(decode_json(request.content.read()), self._max_points)
        keyed = [parse_point(item, self._metrics, index) for index, item in enumerate(items)]
        unit = WriteUnit(group_parts(keyed, self._idempotency_key(request)))
        return self._writer.submit(unit).addCallback(
            lambda result: {"written": result.written, "duplicates": result.duplicates})

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
    @json_route
    def sum_get(self, request):
        args = {k.decode(): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}
        query = {
            "uids": [integer_text(u, "uids", 0, MAX_ID) for u in split_list(args.get("uids"), "uids")],
            "metrics": split_list(args.get("metrics"), "metrics"),
            "atid": integer_text(args.get("atid", "0"), "atid", 0, MAX_ID),
            "from": integer_text(args.get("from"), "from", 0, MAX_TS),
            "to": integer_text(args.get("to"), "to", 0, MAX_TS),
        }
        return self._sum(query)

    @app.route("/v1/sum", methods=["POST"])
    @json_route
    def sum_post(self, request):
        body = decode_json(request.content.read())
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        return self._sum(body)

    @defer.inlineCallbacks
    def _sum(self, query: dict):
        uids = query.get("uids")
        if not isinstance(uids, list) or not uids:
            raise InvalidInput("uids must be a non-empty list of user ids")
        if len(uids) > self._max_uids:
            raise InvalidInput(f"at most {self._max_uids} uids per query")
        uids = [integer({"uids": uid}, "uids", 0, MAX_ID) for uid in uids]
        metrics = query.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            raise InvalidInput("metrics must be a non-empty list")
        metrics = [metric_name(metric, self._metrics) for metric in metrics]
        atid = integer(query, "atid", 0, MAX_ID, default=0)
        start = integer(query, "from", 0, MAX_TS)
        end = integer(query, "to", 0, MAX_TS)
        if start > end:
            raise InvalidInput("from must not be after to")
        offsets = self._offsets(query.get("offsets", {}))
        uids = list(dict.fromkeys(uids))
        requests = []
        for uid in uids:
            offset = offsets.get(uid, 0)
            window = (max(0, start + offset), min(MAX_TS, end + offset))
            for metric in metrics:
                if window[0] <= window[1]:
                    requests.append(SumRequest(uid, atid, metric, *window))
        sums = yield self._reader.sums(requests)
        results = {str(uid): {metric: 0 for metric in metrics} for uid in uids}
        for request, total in zip(requests, sums):
            results[str(request.uid)][request.metric] = total
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
