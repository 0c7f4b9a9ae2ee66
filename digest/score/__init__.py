"""Score: pick each subscriber's papers for the day.

Per-day work happens once in `build_day_index`: fit TF-IDF on the archive, vectorise the
day's candidate papers, compute each paper's trending signal and its near-duplicate group.
Per-subscriber work is then a sparse matrix product for a whole batch of profiles
(`DayIndex.select`), never a Python loop over papers.

Ranking, per subscriber and candidate paper:

    matching  = 0.5 * best_phrase_similarity + 0.5 * whole_text_similarity
    relevance = (1 - expansion_weight) * matching
              + expansion_weight * max(0, cosine(paper, centroid of the profile's best 3) - 0.05)
    score     = relevance * (1 + trending_boost * trending)      (only if relevance >= cut)
    cut       = max(min_relevance, relative_relevance * the profile's best relevance today)
    trending  = recency * (0.5 + 0.5 * engagement)   for sources with engagement
              = recency * 0.5                        for sources without it
    recency   = 0.5 ** (age_days / recency_half_life_days)
    engagement = log1p(upvotes + 2 * comments + stars / 10) / max of that in the same source

where a "phrase" is one comma-separated topic the subscriber typed ("LoRA, activation sparsity"),
so a paper strongly about one topic is not diluted by the subscriber's other topics, and the
whole text, as one query, rewards a paper that touches several of them. The last term is
pseudo-relevance feedback (`expansion`): papers that talk like the reader's best matches of
the day come in even when they share no word with the topics.

The package, in the order a day uses it: `text` (words, phrases, acronyms), `model` (the
plain data in and out), `signals` (trending, near-duplicates), `index` (`build_day_index`,
`DayIndex.select`) over `queries` (with `fusion` for the semantic extra), `expansion`, `learned`,
`picking` and `reasons`. What the rest of the library uses is importable from `digest.score`.
"""

from .index import DayIndex, build_day_index
from .model import (
    CandidatePaper,
    FeedbackSignal,
    Pick,
    Profile,
    QueryEncoder,
    RankingKnobs,
    Selection,
    SemanticIndex,
)
from .signals import duplicate_groups, trending_reason, trending_scores
from .text import (
    analyze,
    expand_acronyms,
    learn_acronyms,
    make_vectorizer,
    paper_text,
    readable_terms,
    split_topics,
)

__all__ = [
    "CandidatePaper",
    "DayIndex",
    "FeedbackSignal",
    "Pick",
    "Profile",
    "QueryEncoder",
    "RankingKnobs",
    "Selection",
    "SemanticIndex",
    "analyze",
    "build_day_index",
    "duplicate_groups",
    "expand_acronyms",
    "learn_acronyms",
    "make_vectorizer",
    "paper_text",
    "readable_terms",
    "split_topics",
    "trending_reason",
    "trending_scores",
]
