"""Scoring: relevance, trending, exclusions, diversity and 'never twice', on plain data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from digest.score import (
    CandidatePaper,
    Profile,
    RankingKnobs,
    build_day_index,
    split_topics,
    trending_scores,
)

NOW = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)


def paper(
    pid: int, title: str, abstract: str = "", source: str = "arxiv", **kw: object
) -> CandidatePaper:
    return CandidatePaper(
        id=pid, title=title, abstract=abstract or title, source=source,
        first_seen_at=kw.pop("first_seen_at", NOW - timedelta(hours=2)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


PAPERS = [
    paper(1, "LoRA: Low-Rank Adaptation of Large Language Models",
          "We propose LoRA, which freezes pretrained weights and injects trainable low-rank "
          "matrices, reducing trainable parameters for fine-tuning."),
    paper(2, "Activation Sparsity in Transformers",
          "We study activation sparsity in MLP layers and exploit it for faster inference."),
    paper(3, "Diffusion Models for Image Generation",
          "Denoising diffusion probabilistic models generate high quality images."),
    paper(4, "Reward Models for RLHF", "We train reward models from human preferences."),
    paper(5, "Graph Neural Networks for Molecules",
          "Message passing graph neural networks predict molecular properties."),
    paper(6, "QLoRA: Efficient Finetuning of Quantized LLMs",
          "QLoRA backpropagates through a frozen 4-bit quantized model into LoRA adapters."),
]


@pytest.fixture
def index():
    return build_day_index(PAPERS, [], NOW, RankingKnobs(min_relevance=0.05))


def test_split_topics_on_commas_semicolons_and_lines() -> None:
    assert split_topics("LoRA, activation sparsity;RLHF\n graph ") == [
        "LoRA", "activation sparsity", "RLHF", "graph"]


def test_relevant_papers_rank_first_with_reasons_in_the_subscribers_words(index) -> None:
    [sel] = index.select([Profile(1, "LoRA, activation sparsity", limit=3)])
    ids = [p.paper_id for p in sel.picks]
    assert set(ids[:3]) == {1, 2, 6}
    assert all(p.reasons and p.reasons[0].startswith("matches: ") for p in sel.picks)
    by_id = {p.paper_id: p for p in sel.picks}
    assert "LoRA" in by_id[1].reasons[0]
    assert "activation sparsity" in by_id[2].reasons[0]


def test_each_topic_counts_on_its_own_so_many_topics_do_not_dilute(index) -> None:
    [one] = index.select([Profile(1, "LoRA", limit=1)])
    [many] = index.select([Profile(1, "LoRA, cooking, sailing, knitting, opera", limit=1)])
    assert one.picks[0].paper_id == many.picks[0].paper_id


def test_nothing_matches_gives_an_empty_selection_unless_trending_fallback(index) -> None:
    empty, fallback = index.select([
        Profile(1, "medieval poetry", limit=3),
        Profile(2, "medieval poetry", limit=3, trending_fallback=True),
    ])
    assert empty.picks == ()
    assert fallback.trending_fallback and len(fallback.picks) == 3


def test_excluded_words_keep_papers_out(index) -> None:
    [sel] = index.select([Profile(1, "LoRA", limit=5, exclude="quantized")])
    assert 6 not in [p.paper_id for p in sel.picks]


def test_papers_already_sent_or_older_than_the_last_digest_are_not_candidates(index) -> None:
    [sent, since] = index.select([
        Profile(1, "LoRA", limit=5, sent_paper_ids=frozenset({1})),
        Profile(2, "LoRA", limit=5, since=NOW),
    ])
    assert 1 not in [p.paper_id for p in sent.picks]
    assert since.picks == ()


def test_near_duplicates_appear_once() -> None:
    twin = paper(7, PAPERS[0].title, PAPERS[0].abstract)
    index = build_day_index([*PAPERS, twin], [], NOW, RankingKnobs(min_relevance=0.05))
    [sel] = index.select([Profile(1, "LoRA low-rank adaptation", limit=5)])
    ids = [p.paper_id for p in sel.picks]
    assert not {1, 7} <= set(ids)


def test_trending_prefers_many_upvotes_today_over_few_last_week() -> None:
    hot = paper(1, "a", source="daily-papers", upvotes=200, published_at=NOW)
    stale = paper(2, "b", source="daily-papers", upvotes=20, published_at=NOW - timedelta(days=7))
    unrated = paper(3, "c", source="page", published_at=NOW)
    t = trending_scores([hot, stale, unrated], NOW, half_life_days=3)
    assert t[0] > t[2] > t[1]


def test_trending_breaks_ties_between_equally_relevant_papers() -> None:
    text = "Sparse mixture of experts routing for language models"
    quiet = paper(1, text, source="daily-papers", upvotes=1, published_at=NOW,
                  abstract=text + " quiet")
    loud = paper(2, text, source="daily-papers", upvotes=300, published_at=NOW,
                 abstract=text + " loud")
    index = build_day_index([quiet, loud], [], NOW, RankingKnobs(min_relevance=0.05))
    [sel] = index.select([Profile(1, "mixture of experts", limit=2)])
    assert sel.picks[0].paper_id == 2
    assert any(r.startswith("trending: 300 upvotes") for r in sel.picks[0].reasons)


def test_hyphenated_and_mixed_case_terms_are_single_tokens(index) -> None:
    vocab = index.vectorizer.vocabulary_
    assert "low-rank" in vocab and "lora" in vocab and "4-bit" in vocab


def test_empty_day_and_empty_batch() -> None:
    index = build_day_index([], [], NOW, RankingKnobs())
    assert index.select([]) == []
    assert index.select([Profile(1, "LoRA", limit=3)])[0].picks == ()
