"""Waiting on the reactor for something a real process does (it needs wall-clock time)."""

from __future__ import annotations

from twisted.internet import defer, reactor, task


@defer.inlineCallbacks
def poll_until(condition, what: str, timeout: float = 20.0):
    """Poll ``condition()`` every 50 ms until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)
