"""Score: pick each subscriber's papers for the day.

Per-day work happens once in `build_day_index`: fit TF-IDF on the archive, vectorise the
day's candidate papers, compute each paper's trending signal and its near-duplicate group.
Per-subscriber work is then a sparse matrix product for a whole batch of profiles
(`DayIndex.select`), never a Python loop over papers.

Ranking, per subscriber and candidate paper:

    relevance = 0.75 * max_phrase_similarity + 0.25 * mean_phrase_similarity
    score     = relevance * (1 + trending_boost * trending)      (only if relevance >= min)
    trending  = recency * (0.5 + 0.5 * engagement)   for sources with engagement
              = recency * 0.5                        for sources without it
    recency   = 0.5 ** (age_days / recency_half_life_days)
    engagement = log1p(upvotes + 2 * comments + stars / 10) / max of that in the same source

where a "phrase" is one comma-separated topic the subscriber typed ("LoRA, activation sparsity"),
so a paper strongly about one topic is not diluted by the subscriber's other topics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.preprocessing import normalize

# A word, with its inner hyphens: "LoRA", "fMRI", "GPT-4", "low-rank", "3D".
WORD_PATTERN = re.compile(r"\w+(?:[-\u2010\u2011]\w+)*")
# "mixture of experts (MoE)", "sparse autoencoders (SAEs)": an acronym defined in parentheses.
ACRONYM_DEFINITION = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9]{1,9})\s*[);,]")
NEAR_DUPLICATE_SIMILARITY = 0.8
SEMANTIC_FLOOR = 0.15
MMR_POOL = 3  # diversity re-ranks the best MMR_POOL x limit candidates, no more
MAX_ARCHIVE_FOR_FIT = 20_000
TRENDING_REASON_MIN_UPVOTES = 5
LEARNED_REASON_MIN_SIMILARITY = 0.15


@dataclass(frozen=True)
class CandidatePaper:
    """What scoring needs of a paper; built from the database once per day."""

    id: int
    title: str
    abstract: str
    source: str
    first_seen_at: datetime
    published_at: datetime | None = None
    upvotes: int | None = None
    comments: int | None = None
    stars: int | None = None

    @property
    def text(self) -> str:
        return paper_text(self.title, self.abstract)


def paper_text(title: str, abstract: str) -> str:
    """The text a paper is matched by."""
    # The title counts twice: it says what the paper is about more densely than the abstract.
    return f"{title}. {title}. {abstract}"


@dataclass(frozen=True)
class FeedbackSignal:
    """A paper the reader rated: weight +1 "more like this", +0.5 a click, -1 "less like this"."""

    paper_id: int
    weight: float
    title: str
    text: str  # paper_text of the paper


@dataclass(frozen=True)
class Profile:
    """One subscriber's request for today: topics, exclusions, and what they already have."""

    subscriber_id: int
    topics: str
    limit: int
    exclude: str = ""
    trending_fallback: bool = False
    since: datetime | None = None  # only papers first seen after this (their last digest)
    sent_paper_ids: frozenset[int] = frozenset()
    feedback: tuple[FeedbackSignal, ...] = ()  # what their clicks and votes taught


@dataclass(frozen=True)
class Pick:
    paper_id: int
    score: float
    relevance: float
    trending: float
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Selection:
    subscriber_id: int
    picks: tuple[Pick, ...]
    trending_fallback: bool = False


@dataclass(frozen=True)
class RankingKnobs:
    min_relevance: float = 0.03
    trending_boost: float = 1.0
    recency_half_life_days: float = 3.0
    mmr_lambda: float = 0.85  # 1: pure relevance order; lower: more diverse digests
    like_weight: float = 0.5  # Rocchio beta: toward the papers a reader liked
    dislike_weight: float = 0.5  # Rocchio gamma: away from the ones they did not

    @classmethod
    def from_settings(cls, settings: Any) -> RankingKnobs:
        return cls(
            min_relevance=settings.min_relevance,
            trending_boost=settings.trending_boost,
            recency_half_life_days=settings.recency_half_life_days,
            mmr_lambda=settings.mmr_lambda,
            like_weight=settings.feedback_like_weight,
            dislike_weight=settings.feedback_dislike_weight,
        )


class QueryEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class SemanticIndex:
    """The optional semantic half of a day's index: paper embeddings and the query encoder."""

    vectors: np.ndarray  # candidates x dim, rows L2-normalised, in candidate order
    encoder: QueryEncoder
    weight: float  # share of the semantic similarity in relevance (SEMANTIC_WEIGHT)


def split_topics(topics: str) -> list[str]:
    """Split free text into topic phrases on commas, semicolons and new lines."""
    return [p.strip() for p in re.split(r"[,;\n]+", topics) if p.strip()]


def _stem(word: str) -> str:
    """A light plural fold ("transformers" -> "transformer", "LLMs" -> "llm"), nothing more."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def analyze(text: str) -> list[str]:
    """Terms of a text: lower-case words, plural-folded, stop words out, and word bigrams.

    A hyphenated word counts as its parts and as the parts joined, so "low-rank" matches
    "low rank" and "lowrank", and "fine-tuning" matches "finetuning"; "GPT-4" stays "gpt4"
    as a term of its own as well as the bigram "gpt 4".
    """
    words: list[str] = []
    extra: list[str] = []
    for match in WORD_PATTERN.finditer(text.lower()):
        parts = re.split(r"[-\u2010\u2011]", match.group())
        if len(parts) > 1:
            extra.append(_stem("".join(parts)))
        words += [_stem(p) for p in parts if p not in ENGLISH_STOP_WORDS]
    bigrams = [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    return words + extra + bigrams


def make_vectorizer(corpus_size: int = 1000) -> TfidfVectorizer:
    """TF-IDF over `analyze` terms; very common terms are dropped only in a real corpus."""
    return TfidfVectorizer(
        analyzer=analyze,
        sublinear_tf=True,
        min_df=1,
        max_df=0.6 if corpus_size >= 50 else 1.0,
        dtype=np.float32,
    )


def learn_acronyms(texts: Sequence[str]) -> dict[str, str]:
    """Acronym -> its most frequent spelled-out form in the corpus, lower-case.

    Finds "long form (ACRONYM)" with Schwartz & Hearst's algorithm (2003): the acronym's
    letters must appear in order in the words before the parenthesis, the first one starting
    a word. So "MoE" typed alone can match papers that only say "mixture of experts".
    """
    seen: dict[str, dict[str, int]] = {}
    for text in texts:
        for match in ACRONYM_DEFINITION.finditer(text):
            short = match.group(1)
            if short.endswith("s") and sum(c.isupper() for c in short[:-1]) >= 2:
                short = short[:-1]  # "SAEs" defines "SAE"
            if sum(c.isupper() for c in short) < 2 or not any(c.isalpha() for c in short):
                continue
            before = re.split(r"[.;:()\[\]]", text[: match.start()])[-1].split()
            window = " ".join(before[-min(len(short) + 5, 2 * len(short)) :])
            long_form = _long_form(short, window)
            if long_form and len(re.split(r"[\s\-]+", long_form)) > 1:
                counts = seen.setdefault(short.lower(), {})
                counts[long_form.lower()] = counts.get(long_form.lower(), 0) + 1
    return {short: max(forms, key=lambda f: (forms[f], -len(f))) for short, forms in seen.items()}


def _long_form(short: str, text: str) -> str | None:
    """Schwartz & Hearst: the shortest tail of `text` whose letters spell `short` in order."""
    s, t = len(short) - 1, len(text) - 1
    while s >= 0:
        char = short[s].lower()
        if not char.isalnum():
            s -= 1
            continue
        while t >= 0 and (
            text[t].lower() != char or (s == 0 and t > 0 and text[t - 1].isalnum())
        ):
            t -= 1
        if t < 0:
            return None
        t -= 1
        s -= 1
    return text[text.rfind(" ", 0, t + 1) + 1 :].strip() or None


def expand_acronyms(phrase: str, acronyms: dict[str, str]) -> str:
    """An acronym-only phrase ("MoE", "ViT") with its spelled-out forms appended.

    Only phrases made of nothing but acronyms are expanded: in "linear RNNs" the other words
    already say what is meant, and adding "recurrent neural networks" would dilute them.
    """
    words = WORD_PATTERN.findall(phrase)
    if not words or any(sum(c.isupper() for c in word) < 2 for word in words):
        return phrase
    additions = []
    for word in words:
        key = word.lower()
        if key not in acronyms and key.endswith("s"):
            key = key[:-1]
        if key in acronyms:
            additions.append(acronyms[key])
    return " ".join([phrase, *additions])


@dataclass
class DayIndex:
    """The day's candidate papers, vectorised once and shared by every subscriber."""

    papers: list[CandidatePaper]
    vectorizer: TfidfVectorizer
    matrix: sparse.csr_matrix  # candidates x terms, rows L2-normalised
    trending: np.ndarray  # per candidate, 0..1
    first_seen: np.ndarray  # per candidate, epoch seconds
    duplicate_group: np.ndarray  # per candidate, id of its near-duplicate group
    knobs: RankingKnobs
    acronyms: dict[str, str] = field(default_factory=dict)
    semantic: SemanticIndex | None = None
    paper_ids: np.ndarray = field(init=False)
    _position: dict[int, int] = field(init=False)
    _search_text: list[str] = field(init=False)
    # Paper x paper cosine, dense while the day is small enough (MMR reads it per subscriber).
    _similarity: np.ndarray | None = field(init=False, default=None)
    _matrix_t: sparse.csc_matrix = field(init=False)
    _signal_vectors: dict[int, sparse.csr_matrix] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._matrix_t = self.matrix.T.tocsc()  # once a day, not once per batch
        if 0 < len(self.papers) <= DENSE_SIMILARITY_MAX:
            self._similarity = (self.matrix @ self.matrix.T).toarray().astype(np.float32)
        self.paper_ids = np.array([p.id for p in self.papers], dtype=np.int64)
        self._position = {p.id: i for i, p in enumerate(self.papers)}
        self._search_text = [f"{p.title} {p.abstract}".lower() for p in self.papers]

    def __len__(self) -> int:
        return len(self.papers)

    def select(self, profiles: Sequence[Profile]) -> list[Selection]:
        """Pick papers for a batch of profiles with one sparse product for the whole batch."""
        if not profiles:
            return []
        if not self.papers:
            return [Selection(p.subscriber_id, ()) for p in profiles]
        phrase_lists = [split_topics(p.topics) for p in profiles]
        relevance, matched = self._relevance(phrase_lists, [p.topics for p in profiles])
        relevance = self._learned(relevance, profiles)
        allowed = self._allowed(profiles)
        # Scores, eligibility and each row's best candidates for the whole batch at once.
        score = relevance * (1.0 + self.knobs.trending_boost * self.trending)[None, :]
        eligible = allowed & (relevance >= self.knobs.min_relevance)
        depth = min(MMR_POOL * max(p.limit for p in profiles) + 50, score.shape[1])
        masked = np.where(eligible, score, -np.inf)
        top = np.argpartition(-masked, depth - 1, axis=1)[:, :depth]
        order = np.take_along_axis(
            top, np.argsort(-np.take_along_axis(masked, top, axis=1), axis=1, kind="stable"),
            axis=1,
        )
        selections = [
            self._select_one(profile, phrases, relevance[row], matched[row], allowed[row],
                             score[row], eligible[row], order[row])
            for row, (profile, phrases) in enumerate(zip(profiles, phrase_lists, strict=True))
        ]
        return [
            self._explain_learned(selection, profile) if profile.feedback else selection
            for selection, profile in zip(selections, profiles, strict=True)
        ]

    # -- feedback: the profile learns from clicks and votes (Rocchio, 1971) ----------------

    def _learned(self, relevance: np.ndarray, profiles: Sequence[Profile]) -> np.ndarray:
        """Move each reader's relevance toward papers like those they liked, away from others.

        Rocchio's update of the query, done on its similarities: relevance + beta * cosine
        with the centroid of the liked papers - gamma * cosine with the disliked centroid,
        floored at 0. Only rows with feedback pay for it: one product for the whole batch.
        """
        rows = [row for row, profile in enumerate(profiles) if profile.feedback]
        if not rows or not self.papers:
            return relevance
        self._vectorise_signals([s for row in rows for s in profiles[row].feedback])
        centroids = []
        for row in rows:
            centroids += [self._centroid(profiles[row].feedback, +1),
                          self._centroid(profiles[row].feedback, -1)]
        similarity = (sparse.vstack(centroids).tocsr() @ self._matrix_t).toarray()
        beta, gamma = self.knobs.like_weight, self.knobs.dislike_weight
        for i, row in enumerate(rows):
            moved = relevance[row] + beta * similarity[2 * i] - gamma * similarity[2 * i + 1]
            relevance[row] = np.maximum(moved, 0.0)
        return relevance

    def _vectorise_signals(self, signals: Sequence[FeedbackSignal]) -> None:
        """TF-IDF rows of rated papers not among today's, once per paper per day."""
        missing = {
            s.paper_id: s.text for s in signals
            if s.paper_id not in self._signal_vectors and s.paper_id not in self._position
        }
        if missing:
            rows = normalize(self.vectorizer.transform(list(missing.values()))).tocsr()
            for i, paper_id in enumerate(missing):
                self._signal_vectors[paper_id] = rows[i]

    def _signal_vector(self, paper_id: int) -> sparse.csr_matrix:
        position = self._position.get(paper_id)
        return self.matrix[position] if position is not None else self._signal_vectors[paper_id]

    def _centroid(self, signals: Sequence[FeedbackSignal], sign: int) -> sparse.csr_matrix:
        """The normalised weighted sum of the liked (sign +1) or disliked (-1) papers."""
        side = [s for s in signals if s.weight * sign > 0]
        if not side:
            return sparse.csr_matrix((1, self.matrix.shape[1]), dtype=np.float32)
        total = sum(abs(s.weight) * self._signal_vector(s.paper_id) for s in side)
        return normalize(sparse.csr_matrix(total))

    def _explain_learned(self, selection: Selection, profile: Profile) -> Selection:
        """Say which liked paper a pick resembles, where it resembles one clearly."""
        liked = [s for s in profile.feedback if s.weight > 0]
        if not liked or not selection.picks:
            return selection
        vectors = sparse.vstack([self._signal_vector(s.paper_id) for s in liked]).tocsr()
        cols = [self._position[p.paper_id] for p in selection.picks]
        similarity = (vectors @ self.matrix[cols].T).toarray()  # liked x picks
        picks = []
        for j, pick in enumerate(selection.picks):
            best = int(np.argmax(similarity[:, j]))
            if similarity[best, j] < LEARNED_REASON_MIN_SIMILARITY:
                picks.append(pick)
                continue
            reason = f"like “{_short_title(liked[best].title)}”, which you liked"
            at = 1 if pick.reasons and pick.reasons[0].startswith("matches:") else 0
            picks.append(replace(pick, reasons=(*pick.reasons[:at], reason, *pick.reasons[at:])))
        return replace(selection, picks=tuple(picks))

    def _relevance(
        self, phrase_lists: list[list[str]], topics: list[str]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Per profile: blended relevance per paper, and per phrase its similarity per paper.

        Each profile contributes its phrases and its whole topics text as queries, so the
        whole batch is one sparse product (and one encoder call with the semantic extra).
        """
        n = len(self.papers)
        rows = [[*phrases, text] for phrases, text in zip(phrase_lists, topics, strict=True)]
        flat = [expand_acronyms(q, self.acronyms) for queries in rows for q in queries]
        relevance = np.zeros((len(rows), n), dtype=np.float32)
        matched: list[np.ndarray] = []
        if not any(phrase_lists):
            return relevance, [np.zeros((0, n), dtype=np.float32) for _ in rows]
        lexical = (normalize(self.vectorizer.transform(flat)) @ self._matrix_t).toarray()
        semantic = self._semantic_similarity(flat)
        start = 0
        for row, queries in enumerate(rows):
            count = len(queries) - 1
            block, whole = lexical[start : start + count], lexical[start + count]
            matched.append(block)
            if count:
                relevance[row] = _blend(block, whole)
                if semantic is not None:
                    sem = _blend(semantic[start : start + count], semantic[start + count])
                    w = self.semantic.weight if self.semantic else 0.0
                    relevance[row] = (1.0 - w) * relevance[row] + w * sem
            start += len(queries)
        return relevance, matched

    def _semantic_similarity(self, queries: list[str]) -> np.ndarray | None:
        """Embedding cosine per query and paper, with the unrelated floor moved to 0."""
        if self.semantic is None:
            return None
        cosine = self.semantic.encoder.encode(queries) @ self.semantic.vectors.T
        # MiniLM puts unrelated texts near 0.1 and on-topic ones at 0.4-0.7; move the floor
        # to 0 so an off-topic paper gains nothing and the scale is comparable to TF-IDF's.
        return np.clip((cosine - SEMANTIC_FLOOR) / (1.0 - SEMANTIC_FLOOR), 0.0, 1.0)

    def _allowed(self, profiles: Sequence[Profile]) -> np.ndarray:
        """Papers each profile may receive: new since their last digest and never sent to them."""
        since = np.array(
            [p.since.timestamp() if p.since else -np.inf for p in profiles], dtype=np.float64
        )
        allowed = self.first_seen[None, :] > since[:, None]
        for row, profile in enumerate(profiles):
            for paper_id in profile.sent_paper_ids:
                col = self._position.get(paper_id)
                if col is not None:
                    allowed[row, col] = False
        return allowed

    def _select_one(
        self,
        profile: Profile,
        phrases: list[str],
        relevance: np.ndarray,
        phrase_similarity: np.ndarray,
        allowed: np.ndarray,
        score: np.ndarray,
        eligible: np.ndarray,
        order: np.ndarray,
    ) -> Selection:
        fallback = False
        if not eligible[order[0]] and profile.trending_fallback:
            score, eligible, fallback = self.trending.astype(np.float32), allowed, True
            order = _top_indices(np.where(eligible, score, -np.inf), MMR_POOL * profile.limit + 50)
        exclusions = [w.lower() for w in split_topics(profile.exclude)]
        pool: list[int] = []
        groups_taken: set[int] = set()
        for col in order:
            if not eligible[col] or len(pool) >= MMR_POOL * profile.limit:
                break
            if self.duplicate_group[col] in groups_taken or (
                exclusions and self._excluded(col, exclusions)
            ):
                continue
            groups_taken.add(int(self.duplicate_group[col]))
            pool.append(int(col))
        chosen = self._diversify(pool, score, profile.limit)
        picks = [
            Pick(
                paper_id=int(self.paper_ids[col]),
                score=float(score[col]),
                relevance=float(relevance[col]),
                trending=float(self.trending[col]),
                reasons=self._reasons(col, phrases, phrase_similarity[:, col], fallback),
            )
            for col in chosen
        ]
        return Selection(profile.subscriber_id, tuple(picks), trending_fallback=fallback)

    def _diversify(self, pool: list[int], score: np.ndarray, limit: int) -> list[int]:
        """Maximal marginal relevance (Carbonell & Goldstein, 1998) over the best few papers.

        Greedily takes the paper maximising  lambda * score / best score - (1 - lambda) *
        its highest cosine with a paper already taken, so ten papers on one sub-topic give
        way to the next sub-topic's best. Costs one small (pool x pool) product per subscriber.
        """
        mmr_lambda = self.knobs.mmr_lambda
        if len(pool) <= 1 or mmr_lambda >= 1.0:
            return pool[:limit]
        if self._similarity is not None:
            similarity = self._similarity[np.ix_(pool, pool)]
        else:
            vectors = self.matrix[pool]
            similarity = (vectors @ vectors.T).toarray()
        gains = score[pool].astype(np.float64)
        gains = gains / gains.max() if gains.max() > 0 else gains
        taken = [0]
        redundancy = similarity[0].copy()
        remaining = np.ones(len(pool), dtype=bool)
        remaining[0] = False
        while len(taken) < min(limit, len(pool)):
            value = np.where(remaining, mmr_lambda * gains - (1 - mmr_lambda) * redundancy, -np.inf)
            best = int(np.argmax(value))
            taken.append(best)
            remaining[best] = False
            redundancy = np.maximum(redundancy, similarity[best])
        return [pool[i] for i in taken]

    def _excluded(self, col: int, exclusions: list[str]) -> bool:
        text = self._search_text[col]
        return any(re.search(rf"\b{re.escape(word)}\b", text) for word in exclusions)

    def _reasons(
        self, col: int, phrases: list[str], similarity: np.ndarray, fallback: bool
    ) -> tuple[str, ...]:
        """Why this paper was picked, in the subscriber's own words and the paper's numbers."""
        reasons: list[str] = []
        if not fallback:
            ranked = sorted(
                (i for i in range(len(phrases)) if similarity[i] > 0.02),
                key=lambda i: -similarity[i],
            )
            if ranked:
                reasons.append("matches: " + ", ".join(phrases[i] for i in ranked[:3]))
        paper = self.papers[col]
        trending = trending_reason(paper)
        if trending:
            reasons.append(trending)
        elif fallback:
            reasons.append("trending today")
        return tuple(reasons)


# How a profile's topics combine: the best-matching phrase, the mean over phrases, and the
# whole text as one query (which rewards a paper touching several of the phrases at once).
BLEND_MAX, BLEND_MEAN, BLEND_WHOLE = 0.5, 0.0, 0.5


def _blend(per_phrase: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return (
        BLEND_MAX * per_phrase.max(axis=0)
        + BLEND_MEAN * per_phrase.mean(axis=0)
        + BLEND_WHOLE * whole
    )


def _short_title(title: str, limit: int = 60) -> str:
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    return title[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:.-") + "…"


def trending_reason(paper: CandidatePaper) -> str:
    parts = []
    if paper.upvotes is not None and paper.upvotes >= TRENDING_REASON_MIN_UPVOTES:
        parts.append(f"{paper.upvotes} upvotes")
    if paper.comments:
        parts.append(f"{paper.comments} comments" if paper.comments > 1 else "1 comment")
    if paper.stars:
        parts.append(f"{paper.stars} GitHub stars")
    return "trending: " + ", ".join(parts) if parts else ""


def _top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (argpartition, then a small sort)."""
    k = min(k, values.shape[0])
    if k <= 0:
        return np.array([], dtype=np.int64)
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.argsort(-values[part], kind="stable")]


def trending_scores(
    papers: Sequence[CandidatePaper], now: datetime, half_life_days: float
) -> np.ndarray:
    """Engagement normalised per source, times exponential decay with age."""
    raw = np.array(
        [
            np.log1p((p.upvotes or 0) + 2 * (p.comments or 0) + (p.stars or 0) / 10)
            for p in papers
        ],
        dtype=np.float64,
    )
    has_engagement = np.array(
        [p.upvotes is not None or p.comments is not None or p.stars is not None for p in papers],
        dtype=bool,
    )
    sources = np.array([p.source for p in papers])
    engagement = np.zeros(len(papers))
    for source in set(sources.tolist()):
        mask = sources == source
        peak = raw[mask].max() if mask.any() else 0.0
        if peak > 0:
            engagement[mask] = raw[mask] / peak
    ages = np.array(
        [
            max((now - (p.published_at or p.first_seen_at)).total_seconds(), 0.0) / 86400
            for p in papers
        ]
    )
    recency = 0.5 ** (ages / max(half_life_days, 0.01))
    return np.where(has_engagement, recency * (0.5 + 0.5 * engagement), recency * 0.5).astype(
        np.float32
    )


DENSE_SIMILARITY_MAX = 6000  # 6,000 papers: a 144 MB float32 matrix, computed once a day


def duplicate_groups(matrix: sparse.csr_matrix, threshold: float) -> np.ndarray:
    """Group near-duplicate papers (cosine above threshold) so a digest carries one of each."""
    n = matrix.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    similar = (matrix @ matrix.T).tocsr()
    similar.data = (similar.data >= threshold).astype(np.int8)
    similar.eliminate_zeros()
    _, labels = sparse.csgraph.connected_components(similar, directed=False)
    return labels.astype(np.int64)


def build_day_index(
    candidates: Sequence[CandidatePaper],
    archive_texts: Sequence[str],
    now: datetime,
    knobs: RankingKnobs,
    semantic: SemanticIndex | None = None,
) -> DayIndex:
    """Do the day's shared work once: vectors, trending signal, near-duplicate groups."""
    corpus = list(archive_texts[-MAX_ARCHIVE_FOR_FIT:]) + [p.text for p in candidates]
    vectorizer = make_vectorizer(len(corpus))
    # One pass of the analyzer over the corpus: the candidates are its last rows.
    try:
        fitted = vectorizer.fit_transform(corpus or ["placeholder"])
    except ValueError:  # nothing but stop words: keep every word rather than fail the day
        fitted = vectorizer.set_params(max_df=1.0).fit_transform(corpus or ["placeholder"])
    matrix = (
        normalize(fitted[len(corpus) - len(candidates) :]).tocsr()
        if candidates
        else sparse.csr_matrix((0, len(vectorizer.vocabulary_)), dtype=np.float32)
    )
    return DayIndex(
        papers=list(candidates),
        vectorizer=vectorizer,
        matrix=matrix,
        trending=trending_scores(candidates, now, knobs.recency_half_life_days)
        if candidates
        else np.zeros(0, dtype=np.float32),
        first_seen=np.array([p.first_seen_at.timestamp() for p in candidates], dtype=np.float64),
        duplicate_group=duplicate_groups(matrix, NEAR_DUPLICATE_SIMILARITY),
        knobs=knobs,
        acronyms=learn_acronyms(corpus),
        semantic=semantic,
    )

