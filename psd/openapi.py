"""The OpenAPI 3 document of every route, native and compatible, served at /openapi.json.

Built in code so that the configured metric names and limits are the ones
described.  Pure code, no I/O.
"""

from __future__ import annotations

from psd.series import STEPS
from psd.validation import MAX_ID, MAX_TS, MAX_VALUE

_INT = {"type": "integer"}
_ID = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
_TS = {"type": "integer", "minimum": 0, "maximum": MAX_TS, "description": "UTC seconds"}
_VALUE = {"type": "integer", "minimum": -MAX_VALUE, "maximum": MAX_VALUE}
_COUNT_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{2,64}$"}
_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string"}, "index": {"type": "integer"}}}
_WRITTEN = {"type": "object", "required": ["written", "duplicates"],
            "properties": {"written": _INT, "duplicates": _INT}}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _form(properties: dict, required: list) -> dict:
    return {"required": True, "content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "properties": properties, "required": required}}}}


def _param(name: str, where: str, schema: dict, description: str = "", required: bool = True) -> dict:
    param = {"name": name, "in": where, "required": required, "schema": schema}
    if description:
        param["description"] = description
    return param


def _responses(ok_description: str, content: dict, errors: tuple = (400, 503)) -> dict:
    texts = {400: "invalid input, with a message", 413: "body too large", 422: "the store refused the data",
             503: "Redis unavailable or psd overloaded (Retry-After)"}
    responses = {"200": {"description": ok_description, "content": content}}
    for status in errors:
        responses[str(status)] = {"description": texts[status], "content": _json({"$ref": "#/components/schemas/Error"})}
    return responses


def _plain(schema: dict) -> dict:
    return {"text/plain": {"schema": schema}}


#: Routes answered without a token (/health gives its details only with the read token).
_OPEN_PATHS = frozenset({"/health/ping", "/health"})


def _secure(paths: dict) -> None:
    """Give every operation an operationId, and the guarded ones the bearer scheme and a 401 answer."""
    for path, item in paths.items():
        for method, operation in item.items():
            words = [part.strip("{}") for part in path.replace(".", "_").split("/") if part]
            operation["operationId"] = "_".join([method, *words])
            if path in _OPEN_PATHS:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = {"description": "a valid bearer token is required",
                                             "content": _json({"$ref": "#/components/schemas/Error"})}


def document(metrics: list[str], max_uids: int, max_buckets: int) -> dict:
    metric = {"type": "string", "enum": metrics}
    uids = {"type": "array", "items": _ID, "minItems": 1, "maxItems": max_uids}
    offsets = {"type": "object", "additionalProperties": {"type": "integer"},
               "description": "uid -> seconds: that user's window becomes [from + offset, to + offset]"}
    atid_path = _param("atid", "path", {"type": "string", "pattern": "^(all|[0-9]+)$"}, "activity type; all (= 0) is every type")
    window = [_param("start_ts", "path", _TS), _param("end_ts", "path", _TS)]
    ids_form = {"ids": {"type": "string", "description": "comma-separated user ids, e.g. 1,2"}}
    id_sums = {"type": "object", "additionalProperties": _INT}
    point = {"type": "object", "required": ["uid", "metric", "ts"], "additionalProperties": False, "properties": {
        "uid": _ID, "atid": _ID, "metric": metric, "ts": _TS, "value": _VALUE,
        "aid": {**_ID, "description": "with total: the activity whose running total this is"},
        "total": {"type": "integer", "minimum": 0, "maximum": MAX_VALUE,
                  "description": "set-total write: psd writes the difference to the last total of (uid, aid, metric)"},
        "id": {"type": "string", "description": "idempotency id of this point"}}}
    count = {"type": "object", "required": ["name", "value", "ts"], "additionalProperties": False,
             "properties": {"name": _COUNT_NAME, "value": _VALUE, "ts": _TS, "id": {"type": "string"}}}
    mumt_answer = {"type": "object", "properties": {"data": {"type": "object", "additionalProperties": {
        "type": "object", "properties": {"_atids": {"type": "array", "items": _INT}},
        "additionalProperties": _INT}}}}
    idempotency = _param("Idempotency-Key", "header", {"type": "string", "maxLength": 128},
                         "a retry with the same key is applied once", required=False)
    paths = {
        "/health/ping": {"get": {"summary": "Liveness (same answer as the original psd)",
                                 "responses": {"200": {"description": "alive", "content": _json(
                                     {"type": "object", "properties": {"pong": {"type": "string"}}})}}}},
        "/health": {"get": {"summary": "Readiness: Redis and the inputs",
                            "responses": {"200": {"description": "ready", "content": _json({"type": "object"})},
                                          "503": {"description": "not ready", "content": _json({"type": "object"})}}}},
        "/v1/points": {"post": {
            "summary": "Write points (one object or an array), all or nothing",
            "parameters": [idempotency],
            "requestBody": {"required": True, "content": _json({"oneOf": [point, {"type": "array", "items": point}]})},
            "responses": _responses("applied", _json(_WRITTEN), (400, 413, 422, 503))}},
        "/v1/sum": {
            "get": {"summary": "Sums per user and metric over [from, to]",
                    "parameters": [_param("uids", "query", {"type": "string"}, "comma-separated"),
                                   _param("metrics", "query", {"type": "string"}, "comma-separated"),
                                   _param("atid", "query", _ID, required=False),
                                   _param("from", "query", _TS), _param("to", "query", _TS)],
                    "responses": _responses("sums", _json({"$ref": "#/components/schemas/Sums"}))},
            "post": {"summary": "Sums per user and metric, with per-user offsets",
                     "requestBody": {"required": True, "content": _json({
                         "type": "object", "required": ["uids", "metrics", "from", "to"], "properties": {
                             "uids": uids, "metrics": {"type": "array", "items": metric, "minItems": 1},
                             "atid": _ID, "from": _TS, "to": _TS, "offsets": offsets}})},
                     "responses": _responses("sums", _json({"$ref": "#/components/schemas/Sums"}))}},
        "/v1/series": {"get": {
            "summary": "Breakdown of one user's sum by step buckets, in a time zone",
            "description": f"One entry per step bucket overlapping [from, to], clipped to it; at most {max_buckets}.",
            "parameters": [_param("uid", "query", _ID), _param("metric", "query", metric),
                           _param("atid", "query", _ID, required=False), _param("from", "query", _TS),
                           _param("to", "query", _TS), _param("step", "query", {"type": "string", "enum": list(STEPS)}),
                           _param("tz", "query", {"type": "string", "default": "UTC"}, "IANA time zone", required=False)],
            "responses": _responses("the series", _json({"type": "object", "properties": {
                "step": {"type": "string"}, "tz": {"type": "string"},
                "series": {"type": "array", "items": {"type": "object", "properties": {
                    "start": _TS, "end": _TS, "value": _INT}}}}}))}},
        "/v1/leaderboard": {"post": {
            "summary": "Rank a list of users (a bracket) by their sums, optionally as the board stood at compare_to",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["uids", "metric", "from", "to"], "additionalProperties": False,
                "properties": {"uids": uids, "metric": metric, "atid": _ID, "from": _TS, "to": _TS, "offsets": offsets,
                               "limit": {"type": "integer", "minimum": 1, "maximum": max_uids},
                               "compare_to": {**_TS, "description": "also rank over [from, compare_to]"}}})},
            "responses": _responses("the board", _json({"type": "object", "properties": {
                "total": _INT, "entries": {"type": "array", "items": {"type": "object", "properties": {
                    "rank": _INT, "uid": {"type": "string"}, "value": _INT,
                    "previous_rank": _INT, "previous_value": _INT}}}}}))}},
        "/v1/counts": {"post": {
            "summary": "Increment global counters (no user), one object or an array",
            "parameters": [idempotency],
            "requestBody": {"required": True, "content": _json({"oneOf": [count, {"type": "array", "items": count}]})},
            "responses": _responses("applied", _json(_WRITTEN), (400, 413, 422, 503))}},
        "/v1/count": {"get": {
            "summary": "Sums of global counters over [from, to]",
            "parameters": [_param("names", "query", {"type": "string"}, "comma-separated counter names"),
                           _param("from", "query", _TS), _param("to", "query", _TS)],
            "responses": _responses("sums", _json({"type": "object", "properties": {"results": id_sums}}))}},
        "/v1/write": {"post": {
            "summary": "Original psd: activity aid has total value as of ts2 (a set-total write)",
            "requestBody": {"required": True, "content": _json({
                "type": "object", "required": ["thing", "uid", "value", "ts2"], "additionalProperties": False,
                "properties": {"thing": metric, "uid": _ID, "atid": _ID, "aid": _ID,
                               "value": {"type": "integer", "minimum": 0, "maximum": MAX_VALUE},
                               "ts1": _TS, "ts2": _TS}})},
            "responses": _responses("ok", _plain({"type": "string", "enum": ["ok"]}), (400, 422, 503))}},
        "/v1/query/{uid}/{thing}/{atid}/{start_ts}/{end_ts}": {"get": {
            "summary": "Original psd: one user's sum, as plain text",
            "parameters": [_param("uid", "path", _ID), _param("thing", "path", metric), atid_path, *window],
            "responses": _responses("the sum", _plain(_INT))}},
        "/v1/query_ids/{thing}/{atid}/{start_ts}/{end_ts}": {"post": {
            "summary": "Original psd: sums per id (JSON sent as text/plain)",
            "parameters": [_param("thing", "path", metric), atid_path, *window],
            "requestBody": _form(ids_form, ["ids"]),
            "responses": _responses("id -> sum", _plain(id_sums))}},
        "/v1/mu_query/{thing}/{atid}/{start_ts}/{end_ts}": {"post": {
            "summary": "Original psd: sums and contributing activity types per user",
            "parameters": [_param("thing", "path", metric), atid_path, *window],
            "requestBody": _form(ids_form, ["ids"]),
            "responses": _responses("values and atids", _json({"type": "object", "properties": {
                "values": id_sums,
                "atids": {"type": "object", "additionalProperties": {"type": "array", "items": _INT}}}}))}},
        "/v1/mumt_query/{atid}/{start_ts}/{end_ts}": {"post": {
            "summary": "Original psd: sums per user and thing, with the activity types that contributed",
            "parameters": [atid_path, *window],
            "requestBody": _form({**ids_form, "things": {"type": "string", "description": "e.g. steps,points"}},
                                 ["ids", "things"]),
            "responses": _responses("data", _json(mumt_answer))}},
        "/v2/mumt_query/{atid}/{start_ts}/{end_ts}": {"post": {
            "summary": "Original psd v2: as v1 with per-user offsets; users without activity are left out",
            "parameters": [atid_path, *window],
            "requestBody": _form({**ids_form, "things": {"type": "string"},
                                  "offsets": {"type": "string", "description": "seconds per id, in the order of ids"}},
                                 ["ids", "things"]),
            "responses": _responses("data", _json(mumt_answer))}},
        "/v1/readcount/{thing}/{start_ts}/{end_ts}": {"get": {
            "summary": "Original psd: one global counter's sum, as plain text",
            "parameters": [_param("thing", "path", _COUNT_NAME), *window],
            "responses": _responses("the sum", _plain(_INT))}},
        "/v1/readcount_with_ids/{prefix}/{start_ts}/{end_ts}": {"post": {
            "summary": "Original psd: counters {prefix}_{id} per id (JSON sent as text/plain)",
            "parameters": [_param("prefix", "path", {"type": "string"}), *window],
            "requestBody": _form(ids_form, ["ids"]),
            "responses": _responses("id -> sum", _plain(id_sums))}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3", "content": _json({"type": "object"})}}}},
    }
    _secure(paths)
    return {
        "openapi": "3.0.3",
        "info": {"title": "psd, the Point Space Daemon", "version": "1",
                 "description": "Activity metrics summed at every calendar granularity. Ranges are inclusive, in UTC "
                                "seconds. The /v1/write, /v1/query..., /v1/mu_query, /v1/mumt_query, /v2/mumt_query "
                                "and /v1/readcount... routes are those of the original Go psd."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "[http] token for the write routes, [http] read_token (or the write token) for the others"}},
            "schemas": {"Error": _ERROR, "Sums": {"type": "object", "properties": {
            "from": _TS, "to": _TS, "atid": _ID,
            "results": {"type": "object", "additionalProperties": id_sums}}}}},
    }
