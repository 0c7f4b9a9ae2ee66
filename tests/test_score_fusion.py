"""Fusion of lexical and semantic similarity: z-scores per query, back on the lexical scale."""

from __future__ import annotations

import numpy as np
import pytest

from digest.score.fusion import zscore_fusion

LEXICAL = np.array([[0.40, 0.05, 0.0, 0.0, 0.0]], dtype=np.float32)
# An embedding model's cosines sit high for everything: 0.55 is its "unrelated".
SEMANTIC = np.array([[0.80, 0.55, 0.75, 0.55, 0.55]], dtype=np.float32)


def test_weight_zero_is_the_lexical_ranking_itself() -> None:
    assert zscore_fusion(LEXICAL, SEMANTIC, 0.0) is LEXICAL


def test_a_paper_without_shared_words_but_close_in_meaning_rises_above_a_stray_match() -> None:
    fused = zscore_fusion(LEXICAL, SEMANTIC, 0.5)[0]
    assert fused[0] == fused.max()  # the best on both stays first
    assert fused[2] > fused[1]  # related idea (no shared word) over a stray-word match
    assert fused[3] == fused[4] == 0.0  # unrelated on both: nothing, not the model's 0.55


def test_the_mix_stays_on_the_lexical_scale_of_each_query() -> None:
    # Standardised per row, mixed, mapped back: before the clip at 0 the row keeps the
    # lexical mean, so the cut-offs and the trending boost read numbers they know.
    fused = zscore_fusion(LEXICAL, SEMANTIC, 0.3)[0].astype(np.float64)
    z_lex = (LEXICAL[0] - LEXICAL[0].mean()) / LEXICAL[0].std()
    z_sem = (SEMANTIC[0] - SEMANTIC[0].mean()) / SEMANTIC[0].std()
    expected = LEXICAL[0].mean() + LEXICAL[0].std() * (0.7 * z_lex + 0.3 * z_sem)
    assert fused == pytest.approx(np.clip(expected, 0, None), abs=1e-6)
    # A tenfold semantic scale changes nothing: only each paper's place among the day's counts.
    assert zscore_fusion(LEXICAL, SEMANTIC * 10, 0.3)[0] == pytest.approx(fused, abs=1e-6)


def test_a_query_no_paper_shares_a_word_with_stays_unmatched() -> None:
    nothing = np.zeros((1, 5), dtype=np.float32)
    assert zscore_fusion(nothing, SEMANTIC, 0.7)[0].tolist() == [0.0] * 5
