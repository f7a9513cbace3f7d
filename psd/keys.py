"""Names of the Redis keys psd writes: the seed's layout, and psd's own extras."""

from __future__ import annotations

from typing import NamedTuple


class Layout(NamedTuple):
    """Key naming; ``prefix`` is the seed's ``hz``.

    ``{prefix}:{uid}:{atid}:{metric}:{bucket}``   the seed's time-bucket hashes
    ``{count_prefix}:{name}:{bucket}``            global counters, same buckets
    ``{prefix}t:{uid}:{metric}``                  per activity id: its newest total (field aid), that
                                                  point's ts/second/atid and the history's floor
    ``{prefix}h:{uid}:{metric}:{aid}``            an activity's set-total history (sorted set by ts)
    ``{prefix}a:{uid}``                           activity types a user has written
    ``{prefix}:id:{key}``                         idempotency keys already applied
    """

    prefix: str = "hz"
    count_prefix: str = "c"

    def hash_prefix(self, uid: int, atid: int, metric: str) -> str:
        """The hash key of a bucket is this followed by the bucket."""
        return f"{self.series_head(uid)}{atid}{self.series_tail(metric)}"

    def series_head(self, uid: int) -> str:
        """A hash prefix is head + atid + tail (the write script joins them for set-totals)."""
        return f"{self.prefix}:{uid}:"

    @staticmethod
    def series_tail(metric: str) -> str:
        return f":{metric}:"

    def hash_key(self, uid: int, atid: int, metric: str, bucket: str) -> str:
        return self.hash_prefix(uid, atid, metric) + bucket

    def count_prefix_of(self, name: str) -> str:
        return f"{self.count_prefix}:{name}:"

    def totals_key(self, uid: int, metric: str) -> str:
        return f"{self.prefix}t:{uid}:{metric}"

    def history_key(self, uid: int, metric: str, aid: int) -> str:
        return f"{self.prefix}h:{uid}:{metric}:{aid}"

    def atids_key(self, uid: int) -> str:
        return f"{self.prefix}a:{uid}"

    def seen_key(self, dedupe_key: str) -> str:
        return f"{self.prefix}:id:{dedupe_key}"
