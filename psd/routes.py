"""What each route declares about itself: who may call it, what body and which fields it takes.

Authorization is decided by the route that actually runs, after Klein has
routed the decoded path, so ``/v1/%70oints`` or ``//v1/points`` cannot reach
a write handler with a weaker check than ``/v1/points``.  Nothing here
compares path strings.  Pure code over a twisted.web request; no I/O.
"""

from __future__ import annotations

import functools
import hmac
from typing import Callable, Optional

from twisted.web.http import parse_qs

from psd.web import json_error

#: Scopes: OPEN needs nothing (health checks); READ needs the read token when one is set (the write
#: token also reads); WRITE needs the write token when one is set, else the read token when that one is
#: set (a deployment that guards its reads never has open writes).  No token set: every route is open
#: (psd listens on loopback by default).
WRITE, READ, OPEN = "write", "read", "open"
#: JSON routes take only ``Content-Type: application/json``: a cross-site form or text/plain POST cannot
#: send it without a CORS preflight, which psd never grants.  The original psd's routes keep taking forms.
JSON_BODY, FORM_BODY = b"application/json", b"application/x-www-form-urlencoded"


class Tokens:
    """The bearer tokens of ``[http]``; compared in constant time, never logged."""

    def __init__(self, write: str = "", read: str = ""):
        self._write = write.encode()
        self._read = read.encode()

    def accepted(self, scope: str) -> tuple[bytes, ...]:
        """The tokens that open ``scope``; empty: open to anyone."""
        if scope == OPEN:
            return ()
        if scope == WRITE:
            return (self._write,) if self._write else tuple(t for t in (self._read,) if t)
        return tuple(t for t in (self._read, self._write) if t) if self._read else ()

    def permits(self, scope: str, authorization: Optional[bytes]) -> bool:
        """Whether an ``Authorization`` header value opens ``scope``."""
        accepted = self.accepted(scope)
        if not accepted:
            return True
        given = bearer_token(authorization)
        # every comparison is made, so the time taken does not say which token was close
        return given is not None and any([hmac.compare_digest(given, token) for token in accepted])

    def allows(self, scope: str, request) -> bool:
        return self.permits(scope, request.getHeader(b"Authorization"))


def bearer_token(authorization: Optional[bytes]) -> Optional[bytes]:
    """The token of ``Bearer <token>`` (scheme case-insensitive), else None."""
    scheme, _, given = (authorization or b"").partition(b" ")
    return given.strip() if scheme.lower() == b"bearer" and given.strip() else None


def media_type(request) -> bytes:
    """The request's Content-Type without parameters, lower case (b"" when absent)."""
    return (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()


def declared(scope: str, body: Optional[bytes] = None, fields: frozenset = frozenset()) -> Callable:
    """Declare a route handler's scope, body type and query (and form) fields; enforce them before it runs.

    The handler's owner must have a ``tokens`` attribute (a Tokens).  Refusals
    are compact JSON: 401 (with WWW-Authenticate), 415, or 400 naming the
    first unknown field.
    """

    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def checked(self, request, *args, **kwargs):
            if not self.tokens.allows(scope, request):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="psd"')
                return json_error(request, 401, "a valid bearer token is required")
            if body is not None and media_type(request) != body:
                return json_error(request, 415, f"Content-Type must be {body.decode()}")
            unknown = _unknown_fields(request, fields)
            if unknown:
                return json_error(request, 400, f"unknown parameter {unknown!r}")
            return handler(self, request, *args, **kwargs)

        checked.scope, checked.body = scope, body
        return checked

    return decorate


def _unknown_fields(request, fields: frozenset) -> Optional[str]:
    names = set(request.args)
    if request.method == b"POST" and media_type(request) == FORM_BODY:
        request.content.seek(0)
        names.update(parse_qs(request.content.read(), 1))
        request.content.seek(0)
    unknown = sorted(name.decode("utf-8", "replace") for name in names if name.decode("utf-8", "replace") not in fields)
    return unknown[0] if unknown else None


def scopes(app_class) -> dict[str, str]:
    """endpoint name -> declared scope (None when undeclared), for every route of a Klein app class."""
    return {rule.endpoint: getattr(getattr(app_class, rule.endpoint, None), "scope", None)
            for rule in app_class.app.url_map.iter_rules()}
