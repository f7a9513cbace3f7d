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
