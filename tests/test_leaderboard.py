"""Ranking: pure, no Redis."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from psd.leaderboard import board, standings


class RankingTests(SynchronousTestCase):
    def test_standard_competition_ranking_ties_by_uid(self):
        self.assertEqual([tuple(s) for s in standings({7: 5, 3: 9, 12: 5, 2: 5, 40: 1})],
                         [(1, 3, 9), (2, 2, 5), (2, 7, 5), (2, 12, 5), (5, 40, 1)])

    def test_ties_order_numerically_not_as_text(self):
        self.assertEqual([s.uid for s in standings({10: 0, 9: 0, 100: 0})], [9, 10, 100])

    def test_board_with_previous_and_limit(self):
        answer = board({1: 30, 2: 50, 3: 30}, previous={1: 20, 2: 0, 3: 25}, limit=2)
        self.assertEqual(answer, {"total": 3, "entries": [
            {"rank": 1, "uid": "2", "value": 50, "previous_rank": 3, "previous_value": 0},
            {"rank": 2, "uid": "1", "value": 30, "previous_rank": 2, "previous_value": 20}]})

    def test_board_without_compare_has_no_previous_fields(self):
        self.assertEqual(board({5: 0}), {"total": 1, "entries": [{"rank": 1, "uid": "5", "value": 0}]})

    def test_board_json_is_what_json_dumps_gives(self):
        """The hand-written encoding against json.dumps of the answer built the plain way."""
        import json
        import random

        from psd.leaderboard import board_json

        def reference(values, previous, limit):
            earlier = {s.uid: s for s in standings(previous)} if previous is not None else None
            entries = []
            for s in standings(values)[:limit]:
                entry = {"rank": s.rank, "uid": str(s.uid), "value": s.value}
                if earlier is not None:
                    entry["previous_rank"], entry["previous_value"] = earlier[s.uid].rank, earlier[s.uid].value
                entries.append(entry)
            return json.dumps({"entries": entries, "total": len(values)}, separators=(",", ":")).encode()

        rng = random.Random(2)
        for _ in range(200):
            uids = rng.sample(range(0, 10**6), rng.randrange(1, 60))
            values = {uid: rng.choice([0, rng.randrange(-5, 5), 2**60]) for uid in uids}
            previous = {uid: rng.randrange(-3, 3) for uid in uids} if rng.random() < 0.5 else None
            limit = rng.choice([None, 1, 3, 100])
            self.assertEqual(board_json(values, previous, limit), reference(values, previous, limit))
