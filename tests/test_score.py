"""Scoring: relevance, trending, exclusions, diversity and 'never twice', on plain data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import partial
from typing import ClassVar

import numpy as np
import pytest

from digest.score import (
    CandidatePaper,
    DayIndex,
    Profile,
    RankingKnobs,
    SemanticIndex,
    analyze,
    build_day_index,
    expand_acronyms,
    learn_acronyms,
    paper_text,
    readable_terms,
    split_topics,
    trending_scores,
)
from digest.score import queries as score_queries
from digest.score.picking import relevance_cuts
from digest.score.text import acronyms_in, word_slots

from .factories import candidate_paper

NOW = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)


paper = partial(candidate_paper, now=NOW)


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
    # Even with MIN_RELEVANCE=0 a paper with no relevance at all is no match.
    anything = build_day_index(PAPERS, [], NOW, RankingKnobs(min_relevance=0.0))
    [lora, none] = anything.select([Profile(1, "LoRA", limit=6), Profile(2, "poetry", limit=3)])
    assert none.picks == () and {p.paper_id for p in lora.picks} == {1, 6}


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


def test_trending_counts_from_the_day_a_paper_was_listed_not_published() -> None:
    weeks_ago, this_morning = NOW - timedelta(days=21), NOW - timedelta(hours=2)
    featured = paper(1, "a", source="daily-papers", upvotes=200, published_at=weeks_ago,
                     listed_at=this_morning)
    unlisted = paper(2, "b", source="daily-papers", upvotes=200, published_at=weeks_ago)
    fresh = paper(3, "c", source="daily-papers", upvotes=200, published_at=this_morning)
    undated = paper(4, "d", source="page", first_seen_at=this_morning)
    t = trending_scores([featured, unlisted, fresh, undated], NOW, half_life_days=3)
    # Featured today, it is as hot as a paper published today; by its publication it is cold.
    assert t[0] == pytest.approx(t[2])
    assert t[1] < t[0] / 100
    # With no date from its source, a paper is as old as its first sighting.
    assert t[3] == pytest.approx(0.5 * 0.5 ** (2 / 24 / 3))


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


def test_hyphenated_terms_count_as_parts_and_joined_and_case_folds(index) -> None:
    vocab = index.vectorizer.vocabulary_
    assert {"lora", "low", "rank", "lowrank", "low rank", "4bit"} <= set(vocab)


def test_tokenization_stems_and_matches_across_hyphens() -> None:
    assert analyze("LLMs fine-tuning")[:5] == ["llm", "fine", "tune", "finetun", "tuning"]
    assert "graph neural network" not in analyze("GNNs")  # bigrams only
    assert "neural network" in analyze("graph neural networks")
    hyphen = paper(1, "Chain-of-thought prompting elicits reasoning")
    spaced = paper(2, "Chain of thought prompting for small models")
    other = paper(3, "Image segmentation with transformers")
    index = build_day_index([hyphen, spaced, other], [], NOW, RankingKnobs())
    [sel] = index.select([Profile(1, "chain of thought", limit=3)])
    assert {p.paper_id for p in sel.picks} == {1, 2}


@pytest.mark.parametrize("a, b", [
    ("robustness", "robust"), ("optimization", "optimizer"), ("generalization", "generalize"),
    ("Transformers", "transformer"), ("LLMs", "LLM"), ("quantized", "quantization"),
])
def test_forms_of_one_word_share_a_term(a: str, b: str) -> None:
    assert set(analyze(a)) & set(analyze(b))


@pytest.mark.parametrize("a, b", [("university", "universe"), ("news", "newspaper")])
def test_words_that_only_look_alike_share_no_term(a: str, b: str) -> None:
    # Porter's first stemmer makes both of the first pair "univers"; Snowball does not.
    assert not set(analyze(a)) & set(analyze(b))


def test_a_word_itself_counts_beside_its_stem_so_an_exact_match_ranks_first() -> None:
    # "decoder" and "decode" share a stem; the word itself is a term too.
    assert set(analyze("decoders")) == {"decod", "decoder"}
    assert analyze("graphs") == ["graph"]  # no second term where the stem is the word
    exact = paper(1, "Brain decoding from fMRI", "We decode images from brain recordings.")
    other = paper(2, "Decoder-only models for fMRI", "A decoder reads brain recordings.")
    index = build_day_index([exact, other], [], NOW, RankingKnobs(min_relevance=0.01))
    [sel] = index.select([Profile(1, "decoding fMRI", limit=2)])
    assert [p.paper_id for p in sel.picks] == [1, 2]


def test_a_topic_meets_papers_using_another_form_of_its_words_and_says_it_in_words() -> None:
    papers = [
        paper(1, "Certified robust classifiers", "Training that is provably robust to noise."),
        paper(2, "Why deep networks generalize", "Overparameterized models generalize well."),
        paper(3, "Adaptive optimizers for transformers", "An optimizer with adaptive steps."),
        paper(4, "Protein folding with diffusion", "Structures from denoising."),
    ]
    index = build_day_index(papers, [], NOW, RankingKnobs(min_relevance=0.01))
    topics = "robustness, generalization, optimization"
    [sel] = index.select([Profile(1, topics, limit=4)])
    assert {p.paper_id for p in sel.picks} == {1, 2, 3}
    reasons = {p.paper_id: p.reasons[0] for p in sel.picks}
    assert reasons == {1: "matches: robustness", 2: "matches: generalization",
                       3: "matches: optimization"}  # the reader's words, never "optim"


def test_readable_terms_are_the_words_papers_use_for_a_stem() -> None:
    texts = ["We optimize with an optimizer.", "Optimization of optimization problems."]
    assert readable_terms(["optim", "optim problem", "unseen"], texts) == [
        "optimization", "optimization problems", "unseen"]


def test_acronyms_are_learned_from_the_corpus_and_expand_acronym_only_topics() -> None:
    texts = [
        "We train a sparse mixture-of-experts (MoE) language model.",
        "Vision Transformers (ViTs) split an image into patches.",
        "No definition here (see Table 2).",
    ]
    acronyms = learn_acronyms(texts)
    assert acronyms == {"moe": "mixture-of-experts", "vit": "vision transformers"}
    assert expand_acronyms("MoE", acronyms) == "MoE mixture-of-experts"
    assert expand_acronyms("ViTs", acronyms) == "ViTs vision transformers"
    assert expand_acronyms("MoE routing", acronyms) == "MoE routing"  # words say enough


def test_an_acronyms_x_stands_for_a_word_starting_ex() -> None:
    acronyms = learn_acronyms([
        "Existing explainable AI (XAI) methods fall short.",
        "We use extreme gradient boosting (XGBoost) as a baseline.",
        "A hidden text (XT) is no definition: the x is inside a word.",
    ])
    assert acronyms == {"xai": "explainable ai", "xgboost": "extreme gradient boosting"}
    defining = paper(1, "Auditing concept explanations",
                     "Existing explainable AI (XAI) methods fall short of audits.")
    spelled = paper(2, "Explainable test prioritisation",
                    "Explanations of learning-to-rank models for explainable AI in testing.")
    other = paper(3, "Diffusion models for images", "Denoising generates images.")
    index = build_day_index([defining, spelled, other], [], NOW, RankingKnobs())
    [sel] = index.select([Profile(1, "XAI", limit=3)])
    assert {p.paper_id for p in sel.picks} == {1, 2}


def test_an_acronym_only_topic_finds_papers_that_spell_it_out() -> None:
    defining = paper(1, "Scaling sparse models",
                     "A mixture of experts (MoE) routes each token to two experts.")
    spelled = paper(2, "Routing in mixture of experts layers",
                    "Each token goes to the top-k experts of the mixture.")
    other = paper(3, "Diffusion models for images", "Denoising generates images.")
    index = build_day_index([defining, spelled, other], [], NOW, RankingKnobs())
    [sel] = index.select([Profile(1, "MoE", limit=3)])
    assert {p.paper_id for p in sel.picks} == {1, 2}


def test_acronyms_among_other_words_are_found_and_spelled_out_on_request() -> None:
    acronyms = learn_acronyms(["Vision-language models (VLMs) read images and text."])
    assert acronyms_in("alignment of VLMs", acronyms) == [("vlm", "vision-language models")]
    assert acronyms_in("alignment of VLM", acronyms) == acronyms_in("alignment of VLMs", acronyms)
    assert expand_acronyms("alignment of VLMs", acronyms) == "alignment of VLMs"
    assert (expand_acronyms("alignment of VLMs, vision-language models (VLMs)", acronyms,
                            everywhere=True)
            == "alignment of VLMs vision-language models, vision-language models (VLMs)")


VLM_DAY = [
    paper(1, "A survey of vision-language models (VLMs)",
          "Vision-language models (VLMs) read images and text together."),
    paper(2, "Aligning vision-language models with human preferences",
          "We align vision-language models to human preferences with feedback on images."),
    paper(3, "Reward models for chat assistants",
          "Reward models trained on human preferences, for the alignment of chat assistants."),
    paper(4, "Image segmentation with transformers", "Masks for images from attention."),
    paper(5, "Protein folding with diffusion models", "Structures from denoising."),
]


@pytest.mark.parametrize("topic", ["alignment of VLMs", "alignment of VLM"])
def test_an_acronym_among_other_words_reaches_papers_that_spell_it_out(topic: str) -> None:
    # The phrase's own match, without the pull toward the best matches (expansion_weight).
    knobs = RankingKnobs(min_relevance=0.01, expansion_weight=0.0)
    index = build_day_index(VLM_DAY, [], NOW, knobs)
    [sel] = index.select([Profile(1, topic, limit=3)])
    assert [p.paper_id for p in sel.picks][:2] == [2, 1]  # 2 aligns VLMs, never says "VLM"
    assert sel.picks[0].reasons[0] == f"matches: {topic}"  # what the reader typed
    # Where no paper spells the acronym out, the phrase knows only "alignment" of paper 2.
    unknown = build_day_index(VLM_DAY[1:], [], NOW, knobs)
    [plain] = unknown.select([Profile(1, topic, limit=3)])
    assert sel.picks[0].relevance > 1.5 * next(p.relevance for p in plain.picks if p.paper_id == 2)


def test_a_phrase_does_not_match_on_its_common_words_alone() -> None:
    # "learning" is in seven papers of the day, "graphs" in two: a short paper dense with
    # "learning" would beat a long one that says "graphs" twice on TF-IDF alone.
    learning = [paper(10 + i, f"Learning {topic}", f"We study learning of {topic} from data.")
                for i, topic in enumerate(["to rank", "rates", "curricula", "to search",
                                           "with noisy labels", "in games"])]
    others = [paper(20 + i, title, title) for i, title in enumerate([
        "Protein structure prediction", "Weather forecasting with ensembles",
        "Compilers for tensor programs", "Speech recognition in noise", "Ocean currents"])]
    only_common = paper(1, "Learning to learn: meta-learning for fast learning",
                        "Learning how to learn new tasks with meta-learning; learning faster.")
    distinctive = paper(2, "Random walks on graphs",
                        "We bound mixing times of random walks on expander graphs with spectral "
                        "methods, give tight constants for regular expanders, and relate hitting "
                        "times to effective resistance.")
    both = paper(3, "Learning on graphs with message passing", "Graph learning for molecules.")
    index = build_day_index([only_common, distinctive, both, *learning, *others], [], NOW,
                            RankingKnobs(min_relevance=0.01))
    coverage = index.queries.coverage.of(["learning on graphs"])[0]
    assert coverage[1] == coverage[2] == 1.0 and coverage[0] < 0.6
    [sel] = index.select([Profile(1, "learning on graphs", limit=9)])
    ranked = [p.paper_id for p in sel.picks]
    assert ranked[:2] == [3, 2]  # then the papers that only say "learning"


def test_a_phrase_is_covered_however_its_hyphenated_words_are_written() -> None:
    papers = [paper(1, "Fine-tuning small models", "Fine-tuning on a budget."),
              paper(2, "Finetuning small models", "Finetuning on a budget."),
              paper(3, "Fine tuning small models", "Fine tuning on a budget."),
              paper(4, "Small models", "Tuning of small models on a budget.")]
    index = build_day_index(papers, [], NOW, RankingKnobs())
    coverage = index.queries.coverage.of(["fine-tuning", "zebra"])
    assert coverage[0].tolist() == [1.0, 1.0, 1.0, 0.0]  # "tuning" alone is not fine-tuning
    assert coverage[1].tolist() == [1.0] * 4  # no word of it is a term today: no verdict


def test_an_acronym_is_held_by_its_whole_spelled_out_form_not_by_one_of_its_words() -> None:
    # A reader of "XAI" was sent papers that merely "explain" something, each said to match
    # "XAI": the rarest word of "explainable AI" stood for the whole of it.
    defining = paper(1, "Explainable AI (XAI) for doctors", "Explainable AI (XAI) in clinics.")
    spelled = paper(2, "Explainable AI for credit scoring", "Which AI decisions are explainable.")
    explains = [paper(10 + i, f"Theory that explains {topic}", f"Our model explains {topic}.")
                for i, topic in enumerate(["proton radius", "ocean tides", "bird flight"])]
    others = [paper(20 + i, t, t) for i, t in enumerate([
        "Weather forecasting with ensembles", "Compilers for tensor programs",
        "AI for protein folding", "Speech recognition with AI"])]
    index = build_day_index([defining, spelled, *explains, *others], [], NOW, RankingKnobs())
    assert index.acronyms["xai"] == "explainable ai"
    coverage = index.queries.coverage.of(["XAI"])[0]
    assert coverage[:2].tolist() == [1.0, 1.0]
    assert coverage[2:5].tolist() == [0.0, 0.0, 0.0]  # "explains" alone is not XAI
    [sel] = index.select([Profile(1, "XAI", limit=10)])
    said_to_match = {p.paper_id for p in sel.picks if p.reasons == ("matches: XAI",)}
    assert said_to_match == {1, 2}
    assert not {p.paper_id for p in sel.picks} & {10, 11, 12}


def test_coverage_in_batches_equals_the_plain_rule() -> None:
    from digest.tools.synthetic import TOPIC_PHRASES, sample_texts

    papers = [paper(i, t, a) for i, (t, a) in enumerate(sample_texts()[:300], start=1)]
    index = build_day_index(papers, [], NOW, RankingKnobs())
    phrases = [*TOPIC_PHRASES, *HOSTILE_TOPICS, "learning on graphs", "LLM compression",
               "alignment of VLMs", "fine-tuning of LLMs", "model model model"]
    held = [set(analyze(p.text)) for p in index.papers]
    batch = index.queries.coverage.of(phrases)
    for row, phrase in enumerate(phrases):
        assert batch[row] == pytest.approx(plain_coverage(index, phrase, held), abs=1e-6)


def test_diversity_lets_a_second_subtopic_in_before_more_of_the_first() -> None:
    extras = ["for code models", "for speech recognition", "for protein folding",
              "for robot control"]
    lora = [paper(i, f"LoRA low-rank adapters {extra}",
                  f"LoRA low-rank adapters fine-tune large language models {extra}.")
            for i, extra in enumerate(extras, 1)]
    sparsity = paper(9, "Faster inference", "Activation sparsity speeds up inference.")
    topics = "LoRA low-rank adapters, activation sparsity"
    # Diversity alone: the expansion would pull this toy day further toward its four LoRA papers.
    plain = build_day_index([*lora, sparsity], [], NOW,
                            RankingKnobs(mmr_lambda=1.0, expansion_weight=0.0))
    diverse = build_day_index([*lora, sparsity], [], NOW,
                              RankingKnobs(mmr_lambda=0.5, expansion_weight=0.0))
    [p1] = plain.select([Profile(1, topics, limit=3)])
    [d1] = diverse.select([Profile(1, topics, limit=3)])
    assert 9 not in [p.paper_id for p in p1.picks]
    assert 9 in [p.paper_id for p in d1.picks]


def test_github_stars_count_as_engagement_normalised_per_source() -> None:
    starred = paper(1, "a", source="github", stars=900, published_at=NOW)
    unstarred = paper(2, "b", source="github", stars=0, published_at=NOW)
    small_source = paper(3, "c", source="daily-papers", upvotes=3, published_at=NOW)
    t = trending_scores([starred, unstarred, small_source], NOW, half_life_days=3)
    assert t[0] == pytest.approx(1.0) and t[2] == pytest.approx(1.0)  # top of its own source
    assert t[1] == pytest.approx(0.5)


def test_hybrid_brings_in_a_related_idea_without_shared_words() -> None:
    from digest import embeddings

    if not embeddings.available():
        pytest.skip("semantic extra not installed: pip install 'paper-digest[semantic]'")
    papers = [
        paper(1, "Overcoming catastrophic forgetting in neural networks",
              "Elastic weight consolidation keeps old abilities while acquiring further ones."),
        paper(2, "Image segmentation with transformers", "Masks from attention and learning."),
        paper(3, "Protein structure prediction", "Folding proteins from their sequences."),
    ]
    encoder = embeddings.load_encoder()
    vectors = encoder.encode([
        paper_text(p.title, p.abstract, title_repeats=embeddings.EMBEDDED_TITLE_REPEATS)
        for p in papers
    ])
    semantic = SemanticIndex(vectors=vectors, encoder=encoder, weight=0.5)
    lexical = build_day_index(papers, [], NOW, RankingKnobs())
    hybrid = build_day_index(papers, [], NOW, RankingKnobs(), semantic)
    [lex] = lexical.select([Profile(1, "continual learning", limit=2)])
    [hyb] = hybrid.select([Profile(1, "continual learning", limit=2)])
    assert [p.paper_id for p in lex.picks] == [2]  # only the stray word "learning"
    assert 1 in [p.paper_id for p in hyb.picks]  # forgetting is what continual learning fights


def test_paper_embeddings_are_computed_once_and_stored(tmp_path) -> None:
    from digest.embeddings import EmbeddingStore

    class CountingEncoder:
        calls: ClassVar[list[int]] = []

        def encode(self, texts):
            self.calls.append(len(texts))
            return np.eye(len(texts), 4, dtype=np.float32)

    encoder = CountingEncoder()
    store = EmbeddingStore(tmp_path / "emb")
    first = store.vectors(PAPERS[:2], encoder)
    again = EmbeddingStore(tmp_path / "emb").vectors(PAPERS[:3], encoder)
    assert encoder.calls == [2, 1]  # only the new paper was encoded the second time
    assert np.array_equal(first, again[:2]) and again.shape == (3, 4)


def test_one_paper_text_the_title_twice_for_tf_idf_once_for_embeddings() -> None:
    # The embedding store's keys hash the text the model read: "title. abstract", as they
    # always have, or every stored vector would be encoded again.
    import hashlib

    from digest.embeddings import paper_key

    lora = PAPERS[0]
    assert lora.text == f"{lora.title}. {lora.title}. {lora.abstract}"
    embedded = f"{lora.title}. {lora.abstract}".encode()
    assert paper_key(lora) == f"{lora.id}:{hashlib.sha1(embedded).hexdigest()[:16]}"


def test_keywords_count_like_the_title_and_a_paper_without_them_reads_as_before() -> None:
    plain = paper(1, "Faster decoding", "Draft tokens are verified in parallel.")
    tagged = paper(1, "Faster decoding", "Draft tokens are verified in parallel.",
                   ai_keywords=("speculative decoding", "draft models"))
    assert plain.text == "Faster decoding. Faster decoding. Draft tokens are verified in parallel."
    assert tagged.text == (plain.text + ". speculative decoding; draft models"
                           ". speculative decoding; draft models")
    embedded = paper_text(tagged.title, tagged.abstract, title_repeats=1)
    assert embedded == "Faster decoding. Draft tokens are verified in parallel."  # store keys


def test_a_paper_is_matched_by_its_keywords_but_not_above_one_that_says_it() -> None:
    others = [paper(10 + i, title, title) for i, title in enumerate([
        "Protein structure prediction", "Weather forecasting with ensembles",
        "Compilers for tensor programs", "Speech recognition in noise"])]
    tagged = paper(1, "Faster decoding for chat models", "Draft tokens are verified in parallel.",
                   ai_keywords=("speculative decoding", "draft models"))
    untagged = paper(2, "Faster decoding for chat models",
                     "Draft tokens are verified in parallel.")
    titled = paper(3, "Speculative decoding with draft models",
                   "Speculative decoding: a draft model proposes, the target model verifies.")
    index = build_day_index([tagged, untagged, titled, *others], [], NOW, RankingKnobs())
    [sel] = index.select([Profile(1, "speculative decoding", limit=3)])
    relevance = {p.paper_id: p.relevance for p in sel.picks}
    assert [p.paper_id for p in sel.picks][:2] == [3, 1]
    assert relevance[1] > 2 * relevance.get(2, 0.0)  # 2 is 1 without its keywords


HOSTILE_TOPICS = ["", " , ;\n ", "the of and", "\U0001f642", "LoRA, LoRA, lora", "MoE",
                  "(.*)+$", "x" * 300, "LoRA,\nactivation sparsity"]


def picks_of(selection) -> list[tuple[int, float, float, tuple[str, ...]]]:
    return [(p.paper_id, round(p.score, 6), round(p.relevance, 6), p.reasons)
            for p in selection.picks]


def test_topics_repeated_in_and_across_batches_score_as_if_seen_alone(monkeypatch) -> None:
    # The index keeps each query text's TF-IDF row for the day: a repeat, in the same batch
    # or a later one, must score exactly as the same profile alone on a fresh index.
    topics = ["LoRA, activation sparsity", "LoRA", "activation sparsity, LoRA", *HOSTILE_TOPICS,
              "LoRA", "LoRA, activation sparsity"]
    profiles = [Profile(i, t, limit=3, trending_fallback=i % 3 == 2, exclude="quantized" * (i % 2))
                for i, t in enumerate(topics)]
    knobs = RankingKnobs(min_relevance=0.05)
    alone = [picks_of(build_day_index(PAPERS, [], NOW, knobs).select([p])[0]) for p in profiles]
    assert alone[0] and alone[1] and not alone[3]  # matches, and a hostile empty topic
    index = build_day_index(PAPERS, [], NOW, knobs)
    assert [picks_of(s) for s in index.select(profiles)] == alone
    assert [picks_of(s) for s in index.select(profiles[::-1])][::-1] == alone
    assert [picks_of(index.select([p])[0]) for p in profiles] == alone
    # Full: the cache starts again, with the same answers.
    monkeypatch.setattr(score_queries, "MAX_CACHED_QUERIES", 2)
    assert [picks_of(s) for s in index.select(profiles[:5])] == alone[:5]
    assert [picks_of(s) for s in index.select(profiles[5:])] == alone[5:]


def test_empty_day_and_empty_batch() -> None:
    index = build_day_index([], [], NOW, RankingKnobs())
    assert index.select([]) == []
    assert index.select([Profile(1, "LoRA", limit=3)])[0].picks == ()


def test_feedback_moves_the_profile_toward_liked_and_away_from_disliked_papers(index) -> None:
    from digest.score import FeedbackSignal

    def rated(pid: int, weight: float, title: str, abstract: str) -> FeedbackSignal:
        return FeedbackSignal(pid, weight, title, paper_text(title, abstract))

    # Papers from an earlier day, not among today's: vectorised with today's vocabulary.
    liked = rated(101, 1.0, "4-bit quantized finetuning", "Quantized models with LoRA adapters.")
    disliked = rated(102, -1.0, "Low-rank adaptation for large language models",
                     "Trainable low-rank matrices, fewer trainable parameters.")
    plain = index.select([Profile(1, "LoRA", limit=2)])[0]
    [learned] = index.select([Profile(1, "LoRA", limit=2, feedback=(liked, disliked))])
    assert plain.picks[0].paper_id == 1
    assert learned.picks[0].paper_id == 6  # QLoRA now leads
    assert learned.picks[0].reasons[1] == "like “4-bit quantized finetuning”, which you liked"
    # A liked paper can bring in a paper the topics alone would not: Rocchio's new interests.
    graph_fan = rated(103, 1.0, "Graph neural networks", "Message passing on molecular graphs.")
    [wider] = index.select([Profile(1, "LoRA", limit=3, feedback=(graph_fan,))])
    assert 5 in [p.paper_id for p in wider.picks]
    # Same answers when the rated papers' vectors come from the day's cache.
    assert index.select([Profile(1, "LoRA", limit=2, feedback=(liked, disliked))]) == [learned]


def test_topic_rows_built_from_phrases_equal_the_vectorizers_own() -> None:
    # A new topics text's TF-IDF row is summed from its phrases' counts, not re-analysed: it
    # must equal `transform` exactly, bigrams across commas, shared words, stop-word-only
    # phrases, acronyms and hostile text included.
    import random

    from digest.tools.synthetic import TOPIC_PHRASES, sample_texts

    papers = [paper(i, t, a) for i, (t, a) in enumerate(sample_texts()[:300], start=1)]
    index = build_day_index(papers, [], NOW, RankingKnobs())
    phrases = [*TOPIC_PHRASES, *HOSTILE_TOPICS, "large language", "models, diffusion", "the of",
               "LoRA RLHF", "GPT-4", "fine-tuning", "  ", "état de l'art", "model model model"]
    rng = random.Random(5)
    texts = [rng.choice([", ", ";", "\n", " , "]).join(rng.sample(phrases, rng.randint(1, 5)))
             for _ in range(500)]
    texts += ["large language, model", "LoRA, RLHF", "", ",,,"]
    assert "languag model" in index.vectorizer.vocabulary_  # across the comma just above
    built = index.queries.query_matrix(texts, [split_topics(text) for text in texts])
    expected = index.vectorizer.transform(
        [expand_acronyms(text, index.acronyms) for text in texts]
    )
    assert (built != expected).nnz == 0
    assert np.array_equal(built.indices, expected.indices)


def plain_coverage(index: DayIndex, phrase: str, held: list[set[str]]) -> list[float]:
    """How much of a phrase each paper (the terms it holds) holds, word by word: the IDF of
    the words it holds over the rarest word's, at most 1 (an acronym also held by a paper
    holding every word of its spelled-out form, and no rarer than that form's rarest word)."""
    vocab, idf = index.vectorizer.vocabulary_, index.vectorizer.idf_
    weighed = []
    for slot in word_slots(phrase, index.acronyms):
        terms = [t for t in slot.terms if t in vocab]
        weight = max((float(idf[vocab[t]]) for t in slot.stems if t in vocab), default=0.0)
        weight = weight or max((float(idf[vocab[t]]) for t in terms), default=0.0)
        spelled = {t for t in slot.spelled if t in vocab}
        if spelled:
            rarest = max(float(idf[vocab[t]]) for t in spelled)
            weight = min(weight, rarest) if weight else rarest
        if terms or spelled:
            weighed.append((weight, terms, spelled))
    if not weighed:
        return [1.0] * len(held)
    rarest_weight = max(w for w, _, _ in weighed)
    return [min(1.0, sum(w for w, terms, spelled in weighed
                         if not has.isdisjoint(terms) or (spelled and spelled <= has))
                / rarest_weight)
            for has in held]


def plain_phrase_similarity(index: DayIndex, phrase: str, held: list[set[str]]) -> list[float]:
    """A phrase's similarity to each paper, the plain way: the cosine of its TF-IDF row (a
    phrase of acronyms alone expanded), or of its spelled-out row if that is better, times
    the paper's coverage of the phrase."""
    row = index.vectorizer.transform([expand_acronyms(phrase, index.acronyms)])
    similarity = (row @ index.matrix.T).toarray()[0]
    if expand_acronyms(phrase, index.acronyms) == phrase and acronyms_in(phrase, index.acronyms):
        spelled = index.queries.spelled_out_row(phrase)
        similarity = np.maximum(similarity, (spelled @ index.matrix.T).toarray()[0])
    coverage = plain_coverage(index, phrase, held)
    return [float(s) * c for s, c in zip(similarity, coverage, strict=True)]


def test_each_pick_says_which_phrases_it_matches_best_first() -> None:
    # The reasons come from batch arrays; check them against the plain rule, computed here
    # pick by pick: up to three phrases with similarity above 0.02 that the pick holds
    # whole, best first, ties in the subscriber's order; if it holds none whole, the same
    # of those it holds in part, as "partly matches".
    import random

    from digest.tools.synthetic import TOPIC_PHRASES, sample_texts

    papers = [paper(i, t, a) for i, (t, a) in enumerate(sample_texts()[:300], start=1)]
    index = build_day_index(papers, [], NOW, RankingKnobs())
    rng = random.Random(11)
    phrase_pool = [*TOPIC_PHRASES, "learning on graphs", "graph transformers for zebrafish"]
    profiles = [Profile(i, ", ".join(rng.sample(phrase_pool, rng.randint(1, 6))), limit=10)
                for i in range(200)]
    matched = partly = 0
    plain: dict[str, tuple[list[float], list[bool]]] = {}
    held = [set(analyze(p.text)) for p in index.papers]
    for profile, selection in zip(profiles, index.select(profiles), strict=True):
        phrases = split_topics(profile.topics)
        for phrase in set(phrases) - set(plain):
            plain[phrase] = (plain_phrase_similarity(index, phrase, held),
                             plain_holds_whole(index, phrase, held))
        for pick in selection.picks:
            col = index.papers.index(next(p for p in papers if p.id == pick.paper_id))
            above = [(-plain[phrase][0][col], i, plain[phrase][1][col])
                     for i, phrase in enumerate(phrases) if plain[phrase][0][col] > 0.02]
            whole = sorted((s, i) for s, i, w in above if w)[:3]
            part = sorted((s, i) for s, i, w in above if not w)[:3]
            line = None
            if whole:
                line = "matches: " + ", ".join(phrases[i] for _, i in whole)
            elif part:
                line = "partly matches: " + ", ".join(phrases[i] for _, i in part)
            lines = [r for r in pick.reasons if r.startswith(("matches:", "partly matches:"))]
            assert lines == ([line] if line else [])
            matched += bool(whole)
            partly += bool(part) and not whole
    assert matched > 500 and partly > 20


def plain_holds_whole(index: DayIndex, phrase: str, held: list[set[str]]) -> list[bool]:
    """Whether each paper holds the whole phrase: it covers it fully (`plain_coverage`),
    and no word of the phrase is missing from the day's vocabulary but for being too
    common to be a term."""
    vocab = index.vectorizer.vocabulary_
    too_common = index.vectorizer.too_common_
    for slot in word_slots(phrase, index.acronyms):
        in_vocabulary = {*slot.terms, *slot.spelled} & set(vocab)
        if not in_vocabulary and too_common.isdisjoint(slot.terms):
            return [False] * len(held)
    return [c >= 1.0 - 1e-6 for c in plain_coverage(index, phrase, held)]


def test_a_pick_that_holds_only_part_of_a_phrase_only_partly_matches_it() -> None:
    # On a day when no paper says "brain", papers on user interfaces were sent to a reader
    # of "brain-computer interfaces" with the line "matches: brain-computer interfaces".
    interfaces = [paper(i, f"User interfaces for {t}", f"We design user interfaces for {t}.")
                  for i, t in enumerate(["drones", "spreadsheets", "cars"], start=1)]
    graphs = paper(4, "Random walks on graphs", "Mixing times of random walks on graphs.")
    others = [paper(10 + i, t, t) for i, t in enumerate([
        "Weather forecasting with ensembles", "Compilers for tensor programs",
        "Protein structure prediction", "Speech recognition in noise"])]
    index = build_day_index([*interfaces, graphs, *others], [], NOW, RankingKnobs())
    assert "brain" not in index.vectorizer.vocabulary_
    bci, walks = index.select([Profile(1, "brain-computer interfaces", limit=3),
                               Profile(2, "random walks on graphs, zebrafish", limit=1)])
    assert {p.paper_id for p in bci.picks} == {1, 2, 3}  # still a full digest of the best
    assert {p.reasons[0] for p in bci.picks} == {"partly matches: brain-computer interfaces"}
    assert [(p.paper_id, p.reasons[0]) for p in walks.picks] == [
        (4, "matches: random walks on graphs")]


def test_a_word_too_common_to_be_a_term_is_not_missing_from_the_day() -> None:
    # "learning" is in every paper of this day: the vectorizer drops it (from 50 papers
    # on), and a paper on learning on graphs still matches "learning on graphs" whole.
    papers = [paper(1, "Learning on graphs", "Learning on graphs from data."),
              *(paper(i, f"Learning gadget{i}", f"Learning gadget{i} from data.")
                for i in range(2, 61))]
    index = build_day_index(papers, [], NOW, RankingKnobs())
    assert "learn" in index.vectorizer.too_common_
    [sel] = index.select([Profile(1, "learning on graphs", limit=1)])
    assert sel.picks[0].reasons[0] == "matches: learning on graphs"


def _unusual_day() -> tuple[list[CandidatePaper], list[CandidatePaper]]:
    """Eight papers that each mention "tardigrades" once in a long abstract about something
    else (weak matches, cosine under 0.03), and a day of unrelated papers."""
    filler = ("We measure throughput, latency and memory of distributed storage systems under "
              "many workloads, replication settings, failure injections and network partitions "
              "across clusters, comparing consistency protocols, caching layers and schedulers. ")
    weak = [paper(i, f"Storage systems study {i}", f"{filler * 3} A note on tardigrades {i}.")
            for i in range(1, 9)]
    others = [paper(100 + i, f"Compiler passes {i}", f"{filler} Register allocation {i}.")
              for i in range(12)]
    return weak, others


def test_a_reader_with_an_unusual_topic_gets_a_full_digest_of_the_best_there_is() -> None:
    weak, others = _unusual_day()
    index = build_day_index([*weak, *others], [], NOW, RankingKnobs())
    [sel] = index.select([Profile(1, "tardigrades", limit=8)])
    assert {p.paper_id for p in sel.picks} == {p.id for p in weak}
    # The old absolute cut, just above these weak matches, sent this reader nothing at all.
    best = max(p.relevance for p in sel.picks)
    absolute = build_day_index([*weak, *others], [], NOW,
                               RankingKnobs(min_relevance=best * 1.01, relative_relevance=0.0))
    assert absolute.select([Profile(1, "tardigrades", limit=8)])[0].picks == ()
    # The cut is relative to the reader's best match: with a paper squarely on the topic
    # today, the weak matches fall under a share of it...
    strong = paper(50, "Tardigrades survive in space", "Tardigrades tardigrades in orbit.")
    index = build_day_index([strong, *weak, *others], [], NOW,
                            RankingKnobs(relative_relevance=0.5))
    [sel] = index.select([Profile(1, "tardigrades", limit=1)])
    assert [p.paper_id for p in sel.picks] == [50]
    # ...and to the digest's length: a reader who asked for more than clear it still gets a
    # full digest, the best match first and then the best of the rest.
    [sel] = index.select([Profile(1, "tardigrades", limit=len(weak) + 1)])
    assert sel.picks[0].paper_id == 50
    assert {p.paper_id for p in sel.picks} == {50, *(p.id for p in weak)}


def test_the_cut_comes_down_to_the_digests_length_but_never_under_the_floor() -> None:
    relevance = np.array([[0.9, 0.2, 0.05, 0.004], [0.9, 0.8, 0.7, 0.6]], dtype=np.float32)
    allowed = np.ones_like(relevance, dtype=bool)
    knobs = RankingKnobs(relative_relevance=0.5, min_relevance=0.01)
    # Without a length: half the best match.
    assert relevance_cuts(relevance, allowed, knobs).tolist() == pytest.approx([0.45, 0.45])
    # A reader asking for 3 papers gets the 3rd best (0.05); the 4th is under the floor.
    cuts = relevance_cuts(relevance, allowed, knobs, np.array([3, 3]))
    assert cuts.tolist() == pytest.approx([0.05, 0.45])
    cuts = relevance_cuts(relevance, allowed, knobs, np.array([4, 10]))
    assert cuts.tolist() == pytest.approx([0.01, 0.45])
    # Papers a reader may not receive (already sent) are not counted.
    allowed[0, 1] = False
    cuts = relevance_cuts(relevance, allowed, knobs, np.array([2, 1]))
    assert cuts.tolist() == pytest.approx([0.05, 0.45])


def test_a_reader_with_no_matching_paper_gets_nothing_or_the_trending_fallback() -> None:
    weak, others = _unusual_day()
    index = build_day_index([*weak, *others], [], NOW, RankingKnobs())
    nothing, fallback, tardigrades = index.select([
        Profile(1, "medieval poetry", limit=5),
        Profile(2, "medieval poetry", limit=5, trending_fallback=True),
        Profile(3, "tardigrades", limit=5),
    ])
    assert nothing.picks == () and not nothing.trending_fallback
    assert fallback.trending_fallback and len(fallback.picks) == 5
    # Under the MIN_RELEVANCE floor a match is noise, however it compares with the best.
    floor = max(p.relevance for p in tardigrades.picks) * 1.01
    index = build_day_index([*weak, *others], [], NOW, RankingKnobs(min_relevance=floor))
    [sel] = index.select([Profile(1, "tardigrades", limit=8, trending_fallback=True)])
    assert sel.trending_fallback
    assert not any(r.startswith("matches:") for p in sel.picks for r in p.reasons)
