"""decode_json's orjson fast path answers exactly as the strict stdlib decoder would.

Bodies are generated as raw text, so that they can hold what a serializer
never writes: duplicate keys, integers beyond 64 bits, lone surrogate
escapes, NaN, odd whitespace, colons inside strings.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from psd import validation
from psd.errors import InvalidInput
from psd.validation import _decode_strictly, decode_json

SPACE = st.sampled_from(["", " ", "\n", "\t "])
KEYS = st.sampled_from(["uid", "ts", "a:b", "value", "metric"])


def _string(draw_chars: list) -> str:
    return '"' + "".join(draw_chars) + '"'


CHARS = st.one_of(
    st.sampled_from(list("abz:0 ")),
    st.sampled_from(["\\u003a", "\\ud800", "\\udfff", "\\ud83d\\ude00", "\\n", '\\"', "\\\\", "é"]),
)
STRINGS = st.lists(CHARS, max_size=4).map(_string)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["NaN", "-Infinity", "1e400", "-0", "01", "1.", "true", "false", "null"]),
)


@st.composite
def bodies(draw, depth: int = 2):
    if depth == 0 or draw(st.booleans()):
        return draw(st.one_of(NUMBERS, STRINGS))
    space = draw(SPACE)
    if draw(st.booleans()):
        items = draw(st.lists(bodies(depth=depth - 1), max_size=3))
        return "[" + space + ("," + space).join(items) + "]"
    pairs = draw(st.lists(st.tuples(KEYS, bodies(depth=depth - 1)), max_size=4))
    return "{" + ",".join(f'{space}"{key}"{space}:{space}{value}' for key, value in pairs) + "}"


def outcome(decode, body: bytes):
    try:
        return "decoded", decode(body)
    except InvalidInput as e:
        return "refused", e.message


class FastPathTests(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None)
    @given(bodies())
    def test_same_answer_as_the_strict_decoder(self, text: str):
        body = text.encode("utf-8")
        self.assertEqual(repr(outcome(decode_json, body)), repr(outcome(_decode_strictly, body)))

    def test_batches_of_points_take_the_fast_path(self):
        """The fast path is used where it matters: not a fallback on every real body."""
        body = json.dumps([{"uid": i, "atid": 1, "metric": "points", "value": 3, "ts": 1767225600}
                           for i in range(3)]).encode()
        strict = []
        original = validation._decode_strictly
        self.patch(validation, "_decode_strictly", lambda b: strict.append(b) or original(b))
        self.assertEqual(decode_json(body)[2]["uid"], 2)
        self.assertEqual(strict, [])
        self.assertRaises(InvalidInput, decode_json, b'[{"uid": 1, "uid": 1}]')
        self.assertEqual(len(strict), 1)
