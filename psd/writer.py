"""The one write path: HTTP and NSQ submit units, the writer coalesces and flushes.

Units are merged into one call of the write script: those of one reactor turn
when Redis has a free call slot, else those that arrive until a slot frees,
for at most ``window`` seconds (or until the batch is full, or its call would
cost more than ``max_script_ms`` of Redis time by the cost model; a unit that
alone would is split, see psd.split).  Each unit's
Deferred fires only when Redis acknowledged the call that holds it, and fails
exactly when that call failed.  The queue is bounded: past ``max_queue_points`` a submit fails
at once with :class:`Overloaded`, which HTTP turns into 503 + Retry-After and
NSQ into a lower RDY.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.logger import Logger

from psd.coalesce import Batch, TotalsHistory
from psd.errors import IdempotencyConflict, InvalidInput, Overloaded, RejectedByStore, StoreUnavailable
from psd.keys import Layout
from psd.model import UnitResult, WriteUnit
from psd.split import WORST_US_PER_ITEM, split_unit


class Writer:
    log = Logger()

    def __init__(self, reactor, store, layout: Layout, dedupe_ttl: int = 86400, window: float = 0.005,
                 max_batch_points: int = 5000, max_script_increments: int = 2000,
                 max_queue_points: int = 200000, max_in_flight: int = 2, max_script_ms: float = 20.0,
                 history: TotalsHistory = TotalsHistory()):
        self._reactor = reactor
        self._store = store
        self._layout = layout
        self._dedupe_ttl = dedupe_ttl
        self._history = history
        self._window = window
        self._max_batch_points = max_batch_points
        self._max_script_increments = max_script_increments
        self._max_queue_points = max_queue_points
        self._max_in_flight = max_in_flight
        self._budget_us = max_script_ms * 1000
        self._day_names: dict = {}
        self._filling = None
        self._waiters: list = []
        self._timer = None
        self._ready: deque = deque()
        self._in_flight = 0
        self._sending = False
        self.queued_points = 0
        #: write-script calls sent, for the benchmarks' commands-per-point figure
        self.calls = 0
        self._idle: list = []

    def submit(self, unit: WriteUnit) -> defer.Deferred:
        """Queue one unit; the Deferred fires with its UnitResult once applied.

        A unit whose call would cost more than ``max_script_ms`` by the cost
        model is applied in pieces that each fit (see :meth:`_submit_pieces`),
        or refused with InvalidInput when it is atomic.
        """
        size = unit.size()
        if self.queued_points + size > self._max_queue_points and self.queued_points:
            return defer.fail(Overloaded("write queue is full"))
        if size * WORST_US_PER_ITEM > self._budget_us:  # cheap: most units cannot come near the budget
            pieces = split_unit(unit, self._layout, self._budget_us)
            if len(pieces) > 1:
                return self._submit_pieces(unit, pieces)
        return self._enqueue(unit, size)

    def _submit_pieces(self, unit: WriteUnit, pieces: list) -> defer.Deferred:
        """Apply a unit too costly for one call as several; answer once, for all of them.

        Not atomic: if a piece fails, the pieces that succeeded stay applied
        (their items with an id, or under an NSQ message's key, are not applied
        again by a retry; items without one would be) and the error says how
        many items are known applied.
        """
        if unit.atomic:
            return defer.fail(InvalidInput(
                f"this request would take {len(pieces)} write-script calls of at most [writer] max_script_ms = "
                f"{self._budget_us / 1000:g} ms of Redis time each, and a request with an Idempotency-Key is "
                f"applied whole in one: send it in {len(pieces)} or more smaller requests"))
        self.log.info("a write of {items} items is applied in {calls} script calls", items=unit.size(),
                      calls=len(pieces))
        done = defer.DeferredList([self._enqueue(piece, piece.size()) for piece in pieces], consumeErrors=True)

        def answered(results):
            failures = [result for ok, result in results if not ok]
            applied = [result for ok, result in results if ok]
            if not failures:
                return UnitResult(sum(r.written for r in applied), sum(r.duplicates for r in applied))
            error = failures[0].value
            known = sum(r.written + r.duplicates for r in applied)
            raise type(error)(f"{error} (the write was split into {len(pieces)} script calls by [writer] "
                              f"max_script_ms; {known} of its {unit.size()} items are known applied, and items "
                              f"without an id would be applied again by a retry)")

        return done.addCallback(answered)

    def _enqueue(self, unit: WriteUnit, size: int) -> defer.Deferred:
        self.queued_points += size
        d = defer.Deferred()
        if self._filling is not None and (
            self._filling.points + size > self._max_batch_points
            or self._filling.increments_estimate() + 10 * size > self._max_script_increments
            or self._filling.cost_us() + size * WORST_US_PER_ITEM > self._budget_us
        ):
            self._seal()
        if self._filling is None:
            self._filling = self._new_batch()
        self._filling.add(unit)
        self._waiters.append(d)
        if (self._filling.points >= self._max_batch_points
                or self._filling.increments_estimate() >= self._max_script_increments
                or self._filling.cost_us() >= self._budget_us):
            self._seal()
        elif self._timer is None:
            # A free call slot: send at the end of this reactor turn, with whatever else arrived
            # in it.  Otherwise wait for a slot (see _call_done), at most ``window``.
            delay = 0 if self._in_flight + len(self._ready) < self._max_in_flight else self._window
            self._timer = self._reactor.callLater(delay, self._window_elapsed)
        return d

    def pending(self) -> int:
        """Points accepted and not yet acknowledged or failed."""
        return self.queued_points

    def whenIdle(self) -> defer.Deferred:
        """Fires when everything submitted so far has been answered (for a clean stop)."""
        if not self.queued_points:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        return d

    def _new_batch(self) -> Batch:
        return Batch(self._layout, self._dedupe_ttl, self._day_names, self._history)

    def _window_elapsed(self) -> None:
        self._timer = None
        if self._filling is not None:
            self._seal()

    def _seal(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._ready.append((self._filling, self._waiters))
        self._filling, self._waiters = None, []
        self._send_ready()

    def _send_ready(self) -> None:
        # A call that fails at once (Redis down) ends inside this loop and calls
        # back here: the flag keeps that a loop instead of a recursion as deep as the queue.
        if self._sending:
            return
        self._sending = True
        try:
            while self._ready and self._in_flight < self._max_in_flight:
                batch, waiters = self._ready.popleft()
                self._in_flight += 1
                self._apply(batch, waiters).addBoth(self._call_done)
        finally:
            self._sending = False

    def _call_done(self, store_error) -> None:
        self._in_flight -= 1
        if store_error is not None:
            # Redis just failed a call: the batches waiting would go to the same dead connection
            # (txredisapi fails a timed-out connection's replies in a loop that would take each of
            # them, encoded and buffered, with it).  Fail them now, unsent; later ones are tried.
            while self._ready:
                batch, waiters = self._ready.popleft()
                self._answer(batch, waiters, failure=store_error)
        self._send_ready()
        if self._filling is not None and self._in_flight < self._max_in_flight:
            self._seal()  # what gathered while Redis was busy goes now, not at the end of its window
        if not self.queued_points and not self._in_flight:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    @defer.inlineCallbacks
    def _apply(self, batch: Batch, waiters: list):
        """Write one batch; re-merge without the parts Redis says it has seen.

        A key Redis reports is left out of every part that carries it, so each
        part is counted once, as a duplicate, however often it came; a unit
        whose Idempotency-Key Redis holds for other content fails alone.
        Fires with the StoreUnavailable error if the store failed the call, else None.
        """
        seen: dict = {}  # idempotency key Redis reported applied -> the content digest it was applied with
        while True:
            keys, args = batch.script_args()
            self.calls += 1
            try:
                reply = yield self._store.write(keys, args)
            except RejectedByStore as e:
                if len(batch.units) > 1:
                    yield self._isolate(batch, waiters)
                else:
                    self._answer(batch, waiters, failure=e)
                return
            except StoreUnavailable as e:
                self._answer(batch, waiters, failure=e)
                return e
            except Exception:  # a bug of ours: fail the units, never hang them
                self.log.failure("write failed unexpectedly")
                self._answer(batch, waiters, failure=Failure())  # HTTP: a 500; NSQ: a dead letter
                return None
            if int(reply[0]) == 0:
                break
            conflicting = set()
            for position in map(int, reply[1:]):
                unit_index, part_index = batch.keyed_parts[abs(position) - 1]
                if position > 0:
                    part = batch.units[unit_index].parts[part_index]
                    seen[part.dedupe_key] = part.digest
                else:
                    conflicting.add(unit_index)
            batch, waiters = self._remerge(batch, waiters, seen, conflicting)
        self._answer(batch, waiters)

    def _remerge(self, batch: Batch, waiters: list, seen: dict, conflicting: set) -> tuple:
        """The batch again without the parts in ``seen``; the ``conflicting`` units are failed now."""
        again, kept = self._new_batch(), []
        for index, (unit, d) in enumerate(zip(batch.units, waiters)):
            if index in conflicting:
                self._answer_unit(unit, d, failure=_conflict(unit))
            else:
                again.add(unit, seen)
                kept.append(d)
        return again, kept

    @defer.inlineCallbacks
    def _isolate(self, batch: Batch, waiters: list):
        """Redis refused the merged data: apply each unit alone, so only the culprit fails.

        Parts found duplicate on the way are found again, and counted, alone.
        """
        self.log.warn("write refused for a batch of {units} units; retrying them one by one", units=len(batch.units))
        for unit, d in zip(batch.units, waiters):
            alone = self._new_batch()
            alone.add(unit)
            yield self._apply(alone, [d])

    def _answer(self, batch: Batch, waiters: list, failure=None) -> None:
        for index, (unit, d) in enumerate(zip(batch.units, waiters)):
            if failure is None and index in batch.conflicts:
                self._answer_unit(unit, d, failure=_conflict(unit))
            else:
                self._answer_unit(unit, d, failure, batch.duplicates.get(index, 0))

    def _answer_unit(self, unit: WriteUnit, d: defer.Deferred, failure=None, duplicates: int = 0) -> None:
        size = unit.size()
        self.queued_points -= size
        if d.called:  # cancelled: the client went away; the write went on regardless
            return
        if failure is not None:
            d.errback(failure)
        else:
            d.callback(UnitResult(size - duplicates, duplicates))


def _conflict(unit: WriteUnit) -> IdempotencyConflict:
    key = next(part.dedupe_key for part in unit.parts if part.digest is not None)
    return IdempotencyConflict(f"Idempotency-Key {key.partition(':')[2]!r} was used for a request with other "
                               f"content within the dedupe window; a retry must send the same body")
