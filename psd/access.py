"""Who may call a route: the scope each route declares, and the bearer tokens that open it.

Authorization is decided by the route that runs (its handler declares
``scope``), never by comparing path strings: Klein routes on the decoded
path, so ``/v1/%70oints`` and ``//v1/points`` are ``/v1/points``.

- ``PUBLIC`` (liveness, health without details): no token ever.
- ``READ``: the read token when one is set (the write token also reads).
- ``WRITE``: the write token when one is set, else the read token when that
  one is set (a deployment that guards its reads never has open writes).
With no token set, every route is open: psd listens on loopback by default.
"""

from __future__ import annotations

import enum
import hmac
from typing import Optional


class Scope(enum.Enum):
    PUBLIC = "public"
    READ = "read"
    WRITE = "write"


class Tokens:
    """The configured bearer tokens; compared in constant time, never logged."""

    def __init__(self, write: str = "", read: str = ""):
        self._write = write.encode()
        self._read = read.encode()

    def accepted(self, scope: Scope) -> tuple[bytes, ...]:
        """The tokens that open ``scope``; empty: open to anyone."""
        if scope is Scope.PUBLIC:
            return ()
        if scope is Scope.WRITE:
            return (self._write,) if self._write else tuple(t for t in (self._read,) if t)
        return tuple(t for t in (self._read, self._write) if t) if self._read else ()

    def permits(self, scope: Scope, authorization: Optional[bytes]) -> bool:
        """Whether an ``Authorization`` header value opens ``scope``."""
        accepted = self.accepted(scope)
        if not accepted:
            return True
        given = bearer_token(authorization)
        # every comparison is made, so the time taken does not say which token was close
        return any([hmac.compare_digest(given, token) for token in accepted]) if given is not None else False


def bearer_token(authorization: Optional[bytes]) -> Optional[bytes]:
    """The token of ``Bearer <token>`` (scheme case-insensitive), else None."""
    scheme, _, given = (authorization or b"").partition(b" ")
    return given.strip() if scheme.lower() == b"bearer" and given.strip() else None
