"""Reading back what the writer hands to ``lua/write.lua`` (ARGV[1], decoded)."""

from __future__ import annotations


def hashes(args: list) -> list[tuple[str, list]]:
    """[(hash key, [field, delta, ...]), ...] from the flat ``hashes`` argument, in order."""
    ttl, prefixes, flat, totals, members, *history = args
    found, i = [], 0
    while i < len(flat):
        prefix, bucket, count = flat[i:i + 3]
        found.append((prefixes[prefix - 1] + bucket, flat[i + 3:i + 3 + 2 * count]))
        i += 3 + 2 * count
    return found


def increments(args: list) -> dict:
    """{(hash key, field): delta}; fails if the call increments a field twice."""
    found = {}
    for key, fields in hashes(args):
        for i in range(0, len(fields), 2):
            if (key, fields[i]) in found:
                raise AssertionError(f"{key} {fields[i]} is incremented twice")
            found[(key, fields[i])] = fields[i + 1]
    return found
