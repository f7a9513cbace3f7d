"""Failures that cross module boundaries, each mapped to one client answer."""


class InvalidInput(ValueError):
    """Bad client input: HTTP 400, NSQ dead letter.  ``index`` names the item."""

    def __init__(self, message: str, index=None):
        super().__init__(message)
        self.message = message
        self.index = index


class StoreUnavailable(Exception):
    """Redis cannot be reached or did not answer in time: HTTP 503, NSQ REQ.

    Whether a write that failed this way was applied is unknown, which is why
    idempotency keys exist.
    """


class Overloaded(StoreUnavailable):
    """The write queue is full: HTTP 503 with Retry-After, NSQ lowers RDY."""


class RejectedByStore(Exception):
    """Redis refused the data itself (overflow, wrong type): nothing applied.

    Retrying cannot help: HTTP 422, NSQ dead letter.
    """


class IdempotencyConflict(RejectedByStore):
    """An ``Idempotency-Key`` already applied to a request with other content: HTTP 422.

    Not a duplicate (that would drop the new content silently) and not
    retryable with that key.
    """
