"""Expansion (pseudo-relevance feedback): a reader's topics widened by their best matches."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import partial

import numpy as np

from digest.score import Profile, RankingKnobs, build_day_index
from digest.score.expansion import Expansion

from .factories import candidate_paper

NOW = datetime(2026, 12, 7, 6, tzinfo=timezone.utc)


paper = partial(candidate_paper, now=NOW)


# A reader of "lifelong learning": one paper says it, the field mostly says "continual
# learning" and "catastrophic forgetting"; another paper shares only the word "learning".
DAY = [
    paper(1, "Lifelong learning without forgetting",
          "Continual learning of tasks in sequence without catastrophic forgetting of old "
          "tasks, for lifelong learning agents."),
    paper(2, "Replay for continual learning",
          "Replay buffers reduce catastrophic forgetting when tasks arrive in sequence."),
    paper(3, "Learning rate warmup for transformers",
          "Warmup and decay schedules of the learning rate stabilise transformer training."),
    paper(4, "Protein structure prediction", "Folding proteins from their sequences."),
    paper(5, "Weather forecasting with ensembles", "Ensembles of weather models forecast rain."),
    paper(6, "Compilers for tensor programs", "Tensor compilers fuse kernels for accelerators."),
    paper(7, "Speech recognition in noise", "Robust acoustic models for noisy speech."),
]


def ranked(weight: float, topics: str = "lifelong learning") -> list[int]:
    index = build_day_index(DAY, [], NOW, RankingKnobs(expansion_weight=weight))
    [selection] = index.select([Profile(1, topics, limit=3)])
    return [pick.paper_id for pick in selection.picks]


def test_a_paper_in_the_fields_other_words_rises_above_a_paper_sharing_a_common_word() -> None:
    without, expanded = ranked(0.0), ranked(0.5)
    assert without[0] == expanded[0] == 1  # the paper that says it stays first
    assert without.index(3) < without.index(2)  # by its words, the learning rate comes first
    assert expanded.index(2) < expanded.index(3)  # continual learning, never "lifelong"


def test_a_topic_no_paper_matches_stays_empty() -> None:
    assert ranked(0.5, "medieval poetry") == []


def test_a_near_duplicate_of_a_best_match_counts_once() -> None:
    twin = paper(8, "Lifelong learning without forgetting",
                 "Continual learning of tasks in sequence without catastrophic forgetting of "
                 "old tasks, for lifelong learning agents.")
    index = build_day_index([*DAY, twin], [], NOW, RankingKnobs())
    expansion = index.expansion
    assert expansion.groups[0] == expansion.groups[7]
    top = np.array([[0, 7, 1]])
    taken = np.ones((1, 3), dtype=bool)
    expansion._once_per_group(top, taken)
    assert taken.tolist() == [[True, False, True]]


def test_a_day_too_big_for_the_dense_cosines_expands_the_same_way() -> None:
    index = build_day_index(DAY, [], NOW, RankingKnobs())
    dense = index.expansion
    sparse_only = Expansion(dense.matrix, dense.matrix_t, None, dense.groups, dense.weight,
                            dense.floor, dense.relative)
    relevance = np.random.default_rng(7).random((4, len(DAY))).astype(np.float32) * 0.3
    relevance[2] = 0.0  # matched nothing: left as it is
    by_dense, dense_sources = dense.expanded(relevance.copy())
    by_sparse, sparse_sources = sparse_only.expanded(relevance.copy())
    np.testing.assert_allclose(by_dense, by_sparse, atol=1e-5)
    assert (dense_sources == sparse_sources).all() and (dense_sources[2] == -1).all()
    assert (by_dense[2] == 0).all() and not np.allclose(by_dense[0], relevance[0])


def test_a_pick_that_shares_no_phrase_says_which_best_match_it_is_close_to() -> None:
    no_shared_word = paper(2, "Replay against catastrophic forgetting",
                           "Replay buffers reduce catastrophic forgetting when tasks arrive "
                           "in sequence.")
    index = build_day_index([DAY[0], no_shared_word, *DAY[2:]], [], NOW, RankingKnobs())
    [selection] = index.select([Profile(1, "lifelong learning", limit=3)])
    reasons = {pick.paper_id: pick.reasons for pick in selection.picks}
    assert reasons[1][0] == "matches: lifelong learning"
    assert reasons[2][0] == ("close to “Lifelong learning without forgetting”, one of your "
                             "best matches today")
