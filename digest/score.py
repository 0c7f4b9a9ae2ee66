"""Score: pick each subscriber's papers for the day.

Per-day work happens once in `build_day_index`: fit TF-IDF on the archive, vectorise the
day's candidate papers, compute each paper's trending signal and its near-duplicate group.
Per-subscriber work is then a sparse matrix product for a whole batch of profiles
(`DayIndex.select`), never a Python loop over papers.

Ranking, per subscriber and candidate paper:

    relevance = 0.5 * best_phrase_similarity + 0.5 * whole_text_similarity
    score     = relevance * (1 + trending_boost * trending)      (only if relevance >= min)
    trending  = recency * (0.5 + 0.5 * engagement)   for sources with engagement
              = recency * 0.5                        for sources without it
    recency   = 0.5 ** (age_days / recency_half_life_days)
    engagement = log1p(upvotes + 2 * comments + stars / 10) / max of that in the same source

where a "phrase" is one comma-separated topic the subscriber typed ("LoRA, activation sparsity"),
so a paper strongly about one topic is not diluted by the subscriber's other topics, and the
whole text, as one query, rewards a paper that touches several of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from itertools import pairwise
from typing import Any, NamedTuple, Protocol

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

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


class Pick(NamedTuple):
    """One paper in a digest (a named tuple: a day makes a million of them)."""

    paper_id: int
    score: float
    relevance: float
    trending: float
    reasons: tuple[str, ...]


# Pick from a (paper_id, score, relevance, trending, reasons) tuple, all in C: the named
# tuple's own __new__ is a Python function, a third of a pick's cost.
_new_pick = partial(tuple.__new__, Pick)


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


TOPIC_SEPARATORS = re.compile(r"[,;\n]+")


def split_topics(topics: str) -> list[str]:
    """Split free text into topic phrases on commas, semicolons and new lines."""
    return [phrase for p in TOPIC_SEPARATORS.split(topics) if (phrase := p.strip())]


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
    words, extra = _words(text)
    return words + extra + _bigrams(words)


def _words(text: str) -> tuple[list[str], list[str]]:
    """A text's words (stemmed, no stop words) and its hyphenated words joined up."""
    words: list[str] = []
    extra: list[str] = []
    for match in WORD_PATTERN.finditer(text.lower()):
        parts = re.split(r"[-\u2010\u2011]", match.group())
        if len(parts) > 1:
            extra.append(_stem("".join(parts)))
        words += [_stem(p) for p in parts if p not in ENGLISH_STOP_WORDS]
    return words, extra


def _bigrams(words: list[str]) -> list[str]:
    return [f"{a} {b}" for a, b in pairwise(words)]


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


# Distinct query texts whose TF-IDF rows a day's index keeps (subscribers share topics, and
# the custom analyser is most of `transform`'s cost); past this many it starts again, so a
# long-lived index stays small (a row is a few dozen numbers).
MAX_CACHED_QUERIES = 50_000
# Phrases whose similarity to every paper a day's index keeps, the first ones seen: 2,000
# rows of 2,000 papers are 16 MB.
MAX_CACHED_PHRASE_ROWS = 2_000
# MMR runs for this many (profile, pool paper, pool paper) triples at most at a time.
MMR_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class _Pool:
    """One profile's best candidates, best first, before diversity re-ranks them."""

    cols: list[int]  # candidate positions
    scores: list[float]  # what each is ranked by: the score, or trending for the fallback
    fallback: bool  # nothing matched and the subscriber asked for trending papers regardless


@dataclass(frozen=True)
class _PhraseTerms:
    """A topic phrase's raw term counts in the day's vocabulary (column, count)."""

    columns: list[int]
    counts: list[float]
    first: str | None  # its first and last words, for the bigrams across commas
    last: str | None


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
    _matrix_t: sparse.csr_matrix = field(init=False)
    _signal_vectors: dict[int, sparse.csr_matrix] = field(init=False, default_factory=dict)
    # Per query text: its normalised TF-IDF row as (term indices, values), see _query_matrix.
    _query_rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(init=False)
    _phrase_counts: dict[str, _PhraseTerms] = field(init=False)
    _phrase_similarity: dict[str, np.ndarray] = field(init=False)  # see _lexical_similarity
    # Per candidate, as plain lists: the per-subscriber steps read a few items each, and a
    # list item costs less than a numpy scalar.
    _ids: list[int] = field(init=False)
    _trending: list[float] = field(init=False)
    _groups: list[int] = field(init=False)
    _has_twin: np.ndarray = field(init=False)  # per candidate: has a near-duplicate today
    _trending_reasons: list[str] = field(init=False)
    # Per candidate: a pick's reasons when it matched no phrase, and in the trending fallback.
    _trending_alone: list[tuple[str, ...]] = field(init=False)
    _fallback_reasons: list[tuple[str, ...]] = field(init=False)
    _negative_boost: np.ndarray = field(init=False)  # -(1 + trending_boost * trending)

    def __post_init__(self) -> None:
        # Once a day, not once per batch; CSR because a product with a CSC operand converts it.
        self._matrix_t = self.matrix.T.tocsr()
        if 0 < len(self.papers) <= DENSE_SIMILARITY_MAX:
            self._similarity = (self.matrix @ self.matrix.T).toarray().astype(np.float32)
        self.paper_ids = np.array([p.id for p in self.papers], dtype=np.int64)
        self._position = {p.id: i for i, p in enumerate(self.papers)}
        self._search_text = [f"{p.title} {p.abstract}".lower() for p in self.papers]
        self._query_rows = {}
        self._phrase_counts = {}
        self._phrase_similarity = {}
        self._ids = self.paper_ids.tolist()
        self._trending = self.trending.tolist()
        self._groups = self.duplicate_group.tolist()
        group_sizes = np.bincount(self.duplicate_group) if len(self.papers) else np.zeros(0)
        self._has_twin = group_sizes[self.duplicate_group] > 1
        self._trending_reasons = [trending_reason(p) for p in self.papers]
        self._trending_alone = [(r,) if r else () for r in self._trending_reasons]
        self._fallback_reasons = [(r or "trending today",) for r in self._trending_reasons]
        self._negative_boost = -(1.0 + self.knobs.trending_boost * self.trending)

    def __len__(self) -> int:
        return len(self.papers)

    def select(self, profiles: Sequence[Profile]) -> list[Selection]:
        """Pick papers for a batch of profiles with one sparse product for the whole batch.

        Everything is done for the batch at once, on (profiles x papers) or (profiles x
        pool) arrays: relevance, eligibility, each row's best candidates, the diversity steps
        and which phrases each pick matches. Per profile there is only a loop over its picks
        that puts their numbers and reasons together, and a slower path for the few rows
        with near-duplicates, exclusions or the trending fallback (`_pool`).
        """
        if not profiles:
            return []
        if not self.papers:
            return [Selection(p.subscriber_id, ()) for p in profiles]
        phrase_lists = [split_topics(p.topics) for p in profiles]
        counts = np.array([len(phrases) for phrases in phrase_lists], dtype=np.int64)
        relevance, lexical, phrase_slots = self._relevance(
            phrase_lists, counts, [p.topics for p in profiles]
        )
        relevance = self._learned(relevance, profiles)
        allowed = self._allowed(profiles)
        limits = np.array([p.limit for p in profiles], dtype=np.int64)
        cols, scores, sizes, fallback = self._pools(profiles, relevance, allowed, limits)
        taken = self._diversify(cols, scores, sizes, limits)
        picked = np.take_along_axis(cols, taken, axis=1)
        codes = _match_codes(lexical, phrase_slots, counts, picked)
        wanted = np.minimum(limits, sizes).tolist()
        selections = [
            self._selection(profile, phrases, row_fallback, *row_picks)
            for profile, phrases, row_fallback, *row_picks in zip(
                profiles, phrase_lists, fallback.tolist(),
                [row[:n] for row, n in zip(picked.tolist(), wanted, strict=True)],
                np.take_along_axis(scores, taken, axis=1).tolist(),
                np.take_along_axis(relevance, picked, axis=1).tolist(),
                codes.tolist(), strict=True,
            )
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
            picks.append(pick._replace(reasons=(*pick.reasons[:at], reason, *pick.reasons[at:])))
        return replace(selection, picks=tuple(picks))

    def _relevance(
        self, phrase_lists: list[list[str]], counts: np.ndarray, topics: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per profile: blended relevance per paper. Also the lexical similarity of each
        distinct query to each paper, and per profile the rows of its phrases in that
        (profiles x most phrases; a shorter row repeats its first phrase).

        Each profile contributes its phrases and its whole topics text as queries. Subscribers
        share phrases heavily, so each distinct query of the batch is scored once (one sparse
        product, one encoder call with the semantic extra) and each profile gathers its rows.
        """
        n = len(self.papers)
        relevance = np.zeros((len(phrase_lists), n), dtype=np.float32)
        slot: dict[str, int] = {}  # distinct query -> its row
        splits: list[list[str]] = []  # per distinct query: its phrases
        rows: list[list[int]] = []
        for phrases in phrase_lists:
            row = []
            for phrase in phrases:
                if phrase not in slot:
                    slot[phrase] = len(splits)
                    splits.append([phrase])
                row.append(slot[phrase])
            rows.append(row)
        whole = []
        for text, phrases in zip(topics, phrase_lists, strict=True):
            if text not in slot:
                slot[text] = len(splits)
                splits.append(phrases)
            whole.append(slot[text])
        width = max(1, int(counts.max(initial=0)))
        phrase_slots = np.array(
            [row + row[:1] * (width - len(row)) if row else [w] * width
             for row, w in zip(rows, whole, strict=True)], dtype=np.int64,
        )
        queries = list(slot)
        lexical = self._lexical_similarity(queries, splits)
        matching = np.flatnonzero(counts)  # profiles with at least one phrase
        slots, whole_slots = phrase_slots[matching], np.array(whole)[matching]
        relevance[matching] = _blend(lexical, slots, whole_slots)
        semantic = self._semantic_similarity(queries)
        if semantic is not None and self.semantic is not None:
            sem = _blend(semantic, slots, whole_slots)
            w = self.semantic.weight
            relevance[matching] = (1.0 - w) * relevance[matching] + w * sem
        return relevance, lexical, phrase_slots

    def _lexical_similarity(self, queries: list[str], splits: list[list[str]]) -> np.ndarray:
        """Cosine of each query with each paper (queries x papers).

        A single phrase's row is kept for the day (the popular ones come back in every
        batch, a whole topics text seldom does), so the sparse product is only for the rest.
        """
        similarity = np.empty((len(queries), len(self.papers)), dtype=np.float32)
        fresh = []
        for row, query in enumerate(queries):
            known = self._phrase_similarity.get(query)
            if known is None:
                fresh.append(row)
            else:
                similarity[row] = known
        if fresh:
            rows = self._query_matrix([queries[i] for i in fresh], [splits[i] for i in fresh])
            similarity[fresh] = (rows @ self._matrix_t).toarray()
            room = MAX_CACHED_PHRASE_ROWS - len(self._phrase_similarity)
            for row in fresh:
                if room > 0 and len(splits[row]) == 1 and splits[row][0] == queries[row]:
                    self._phrase_similarity[queries[row]] = similarity[row].copy()
                    room -= 1
        return similarity

    def _query_matrix(self, queries: list[str], splits: list[list[str]]) -> sparse.csr_matrix:
        """The queries' acronym-expanded, normalised TF-IDF rows, as `transform` gives them.

        Rows are kept on the day's index by query text, since subscribers share topics and
        every batch brings the same ones back. A new text is built from its phrases' term
        counts (`_composed_rows`; `splits` are the texts' phrases), each phrase
        analysed once a day; only a text that is all acronyms, and so gets their spelled-out
        forms appended, goes to `transform`.
        """
        rows = [self._query_rows.get(q) for q in queries]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            if len(self._query_rows) + len(missing) > MAX_CACHED_QUERIES:
                self._query_rows.clear()
                self._phrase_counts.clear()
            expanded = {i: expand_acronyms(queries[i], self.acronyms) for i in missing}
            plain = [i for i in missing if expanded[i] == queries[i]]
            acronyms = [i for i in missing if expanded[i] != queries[i]]
            fresh = []
            if plain:
                fresh.append((plain, self._composed_rows([splits[i] for i in plain])))
            if acronyms:
                fresh.append((acronyms, self.vectorizer.transform([expanded[i] for i in acronyms])))
            for positions, matrix in fresh:
                for k, i in enumerate(positions):
                    lo, hi = matrix.indptr[k], matrix.indptr[k + 1]
                    rows[i] = self._query_rows[queries[i]] = (
                        matrix.indices[lo:hi], matrix.data[lo:hi]
                    )
        known = [row for row in rows if row is not None]  # all of them by now
        indptr = np.zeros(len(known) + 1, dtype=np.int64)
        np.cumsum([len(indices) for indices, _ in known], out=indptr[1:])
        return sparse.csr_matrix(
            (np.concatenate([values for _, values in known]),
             np.concatenate([indices for indices, _ in known]), indptr),
            shape=(len(known), self.matrix.shape[1]),
        )

    def _composed_rows(self, texts: list[list[str]]) -> sparse.csr_matrix:
        """TF-IDF rows of topic texts (given as their phrases), summed from the phrases'
        counts: what `transform` gives, to the bit.

        A text's terms are its phrases' terms plus the bigrams that run across a comma
        ("lora, diffusion" holds "lora diffusion"), so its counts are the phrases' counts
        plus those; then the vectorizer's own steps: 1 + log(count), times idf, L2 norm.
        """
        vocabulary = self.vectorizer.vocabulary_
        rows: list[int] = []
        cols: list[int] = []
        counts: list[float] = []
        for k, phrases in enumerate(texts):
            previous = None  # the last word so far, to pair with the next phrase's first
            for phrase in phrases:
                terms = self._phrase_counts.get(phrase) or self._phrase_terms(phrase)
                cols += terms.columns
                counts += terms.counts
                rows += [k] * len(terms.columns)
                if terms.first is None:
                    continue
                if previous is not None:
                    col = vocabulary.get(f"{previous} {terms.first}")
                    if col is not None:
                        rows.append(k)
                        cols.append(col)
                        counts.append(1.0)
                previous = terms.last
        matrix = sparse.coo_matrix(
            (np.array(counts, dtype=np.float32), (rows, cols)),
            shape=(len(texts), self.matrix.shape[1]),
        ).tocsr()  # sums the counts of a term two phrases share
        matrix.sort_indices()
        np.log(matrix.data, out=matrix.data)
        matrix.data += 1.0
        matrix.data *= self.vectorizer.idf_[matrix.indices]
        inplace_csr_row_normalize_l2(matrix)  # `normalize` without its checks, 10x faster
        return matrix

    def _phrase_terms(self, phrase: str) -> _PhraseTerms:
        """A phrase's term counts in today's vocabulary, and its first and last word."""
        words, extra = _words(phrase)
        found: dict[int, float] = {}
        for term in words + extra + _bigrams(words):
            col = self.vectorizer.vocabulary_.get(term)
            if col is not None:
                found[col] = found.get(col, 0.0) + 1.0
        terms = _PhraseTerms(
            list(found), list(found.values()),
            words[0] if words else None, words[-1] if words else None,
        )
        self._phrase_counts[phrase] = terms
        return terms

    def _semantic_similarity(self, queries: list[str]) -> np.ndarray | None:
        """Embedding cosine per query (acronyms expanded) and paper, the unrelated floor at 0."""
        if self.semantic is None:
            return None
        expanded = [expand_acronyms(q, self.acronyms) for q in queries]
        cosine = self.semantic.encoder.encode(expanded) @ self.semantic.vectors.T
        # MiniLM puts unrelated texts near 0.1 and on-topic ones at 0.4-0.7; move the floor
        # to 0 so an off-topic paper gains nothing and the scale is comparable to TF-IDF's.
        return np.clip((cosine - SEMANTIC_FLOOR) / (1.0 - SEMANTIC_FLOOR), 0.0, 1.0)

    def _allowed(self, profiles: Sequence[Profile]) -> np.ndarray:
        """Papers each profile may receive: new since their last digest and never sent to them."""
        since = np.array(
            [p.since.timestamp() if p.since else -np.inf for p in profiles], dtype=np.float64
        )
        allowed = self.first_seen[None, :] > since[:, None]
        rows: list[int] = []
        cols: list[int] = []
        for row, profile in enumerate(profiles):
            for paper_id in profile.sent_paper_ids:
                col = self._position.get(paper_id)
                if col is not None:
                    rows.append(row)
                    cols.append(col)
        allowed[rows, cols] = False
        return allowed

    def _pools(
        self, profiles: Sequence[Profile], relevance: np.ndarray, allowed: np.ndarray,
        limits: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each profile's best MMR_POOL x limit candidates, best first, for diversity to rank.

        Returns (profiles x width) candidate columns and their scores, how many of each row
        are real, and which rows fell back to trending papers. Most rows are just their best
        eligible candidates; rows with a near-duplicate among them, exclusions or nothing
        eligible take `_pool`'s loop.
        """
        # score = relevance * (1 + boost * trending), negated for the ascending partition,
        # and 0 where not eligible (a multiply: np.where or a masked copy cost 10x as much).
        eligible = relevance >= self.knobs.min_relevance
        eligible &= allowed
        negative = relevance * self._negative_boost[None, :]
        negative *= eligible
        sizes = MMR_POOL * limits
        depth = min(int(sizes.max()) + 50, negative.shape[1])
        top = np.argpartition(negative, depth - 1, axis=1)[:, :depth]
        top_scores = np.take_along_axis(negative, top, axis=1)
        rank = np.argsort(top_scores, axis=1, kind="stable")
        order = np.take_along_axis(top, rank, axis=1)
        ranked = -np.take_along_axis(top_scores, rank, axis=1).astype(np.float64)
        # The eligible candidates come first in `order`: the others scored 0.
        eligible_counts = (ranked > 0).sum(axis=1)
        twins = np.any(self._has_twin[order], axis=1)
        width = min(int(sizes.max()), depth)
        cols, scores = order[:, :width].copy(), ranked[:, :width].copy()
        sizes = np.minimum(sizes, eligible_counts)
        fallback = np.zeros(len(profiles), dtype=bool)
        for row, (profile, twin, count) in enumerate(
            zip(profiles, twins.tolist(), eligible_counts.tolist(), strict=True)
        ):
            if twin or profile.exclude or (not count and profile.trending_fallback):
                pool = self._pool(profile, order[row].tolist(), ranked[row].tolist(), count,
                                  allowed[row])
                count = sizes[row] = len(pool.cols)
                cols[row, :count], scores[row, :count] = pool.cols, pool.scores
                fallback[row] = pool.fallback
        return cols, scores, sizes, fallback

    def _pool(
        self,
        profile: Profile,
        cols: list[int],
        scores: list[float],
        eligible: int,
        allowed: np.ndarray,
    ) -> _Pool:
        """The best MMR_POOL x limit candidates, one per near-duplicate group, none excluded.

        `cols` are the row's best candidates, best first, with their scores; the first
        `eligible` of them may be sent. When none is eligible and the subscriber asked for
        trending papers regardless, the candidates are instead everything they may receive,
        ranked by the trending signal.
        """
        fallback = not eligible and profile.trending_fallback
        if fallback:
            trending = np.where(allowed, self.trending, -np.inf)
            order = _top_indices(trending, MMR_POOL * profile.limit + 50)
            cols, scores = order.tolist(), trending[order].tolist()
            eligible = int(allowed[order].sum())
        exclusions = [w.lower() for w in split_topics(profile.exclude)] if profile.exclude else []
        size = MMR_POOL * profile.limit
        pool: list[int] = []
        pool_scores: list[float] = []
        groups_taken: set[int] = set()
        for col, value in zip(cols[:eligible], scores[:eligible], strict=True):
            if len(pool) >= size:
                break
            group = self._groups[col]
            if group in groups_taken or (exclusions and self._excluded(col, exclusions)):
                continue
            groups_taken.add(group)
            pool.append(col)
            pool_scores.append(value)
        return _Pool(pool, pool_scores, fallback)

    def _diversify(
        self, cols: np.ndarray, scores: np.ndarray, sizes: np.ndarray, limits: np.ndarray
    ) -> np.ndarray:
        """Maximal marginal relevance (Carbonell & Goldstein, 1998) over the best few papers.

        Greedily takes the paper maximising  lambda * score / best score - (1 - lambda) *
        its highest cosine with a paper already taken, so ten papers on one sub-topic give
        way to the next sub-topic's best. Returns, per profile, positions in its pool in the
        order taken (the first min(limit, size) count). The greedy steps run for many
        profiles at once (`_diversify_block`).
        """
        width = int(sizes.max(initial=0))
        steps = max(1, min(int(limits.max()), width))
        if width <= 1 or self.knobs.mmr_lambda >= 1.0:
            return np.broadcast_to(np.arange(steps), (len(cols), steps))
        cols, scores = cols[:, :width], scores[:, :width]
        block = max(1, MMR_BLOCK_ELEMENTS // (width * width))
        return np.vstack([
            self._diversify_block(cols[start : start + block], scores[start : start + block],
                                  sizes[start : start + block], steps)
            for start in range(0, len(cols), block)
        ])

    def _diversify_block(
        self, cols: np.ndarray, scores: np.ndarray, sizes: np.ndarray, steps: int
    ) -> np.ndarray:
        """MMR for a block of profiles on (profiles x width) arrays, a short pool padded.

        A padding slot is worth -inf, so it is never taken; steps past a profile's own limit
        change only what is then cut off. Ties go to the better-ranked paper, as `argmax`
        takes the first maximum.
        """
        mmr_lambda = self.knobs.mmr_lambda
        width = cols.shape[1]
        valid = np.arange(width)[None, :] < sizes[:, None]
        best_score = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
        gains = np.divide(scores, best_score, out=scores.copy(), where=best_score > 0)
        similarity_to = self._pool_similarity(cols, sizes)
        taken = np.zeros((len(cols), steps), dtype=np.int64)
        # What taking each paper is worth before its redundancy; -inf once taken, or padding.
        worth = np.where(valid, mmr_lambda * gains, -np.inf)
        worth[:, 0] = -np.inf
        redundancy = similarity_to(taken[:, 0])
        block = np.arange(len(cols))
        for step in range(1, steps):
            best = (worth - (1 - mmr_lambda) * redundancy).argmax(axis=1)
            taken[:, step] = best
            worth[block, best] = -np.inf
            np.maximum(redundancy, similarity_to(best), out=redundancy)
        return taken

    def _pool_similarity(
        self, cols: np.ndarray, sizes: np.ndarray
    ) -> Callable[[np.ndarray], np.ndarray]:
        """For MMR: given a position in each pool, that paper's cosine with its whole pool.

        With the day's dense paper x paper matrix only those rows are read (np.take on the
        flat matrix, the fastest gather); otherwise each pool's block is computed once.
        """
        block = np.arange(len(cols))
        if self._similarity is not None:
            flat, n = self._similarity.reshape(-1), self._similarity.shape[0]
            return lambda position: flat.take(cols[block, position][:, None] * n + cols)
        width = cols.shape[1]
        blocks = np.zeros((len(cols), width, width), dtype=np.float32)
        for row, size in enumerate(sizes.tolist()):
            if size:
                vectors = self.matrix[cols[row, :size]]
                blocks[row, :size, :size] = (vectors @ vectors.T).toarray()
        return lambda position: blocks[block, position]

    def _selection(
        self,
        profile: Profile,
        phrases: list[str],
        fallback: bool,
        cols: list[int],
        scores: list[float],
        relevance: list[float],
        codes: list[int],
    ) -> Selection:
        """The profile's picks, in the order MMR took them, with their numbers and reasons.

        `codes` say which phrases each pick matches (`_match_codes`); the profile's ten
        picks mostly match the same ones, so each line is written once. A million picks a
        day: the loop is kept to what differs per pick."""
        reasons: list[tuple[str, ...]]
        if fallback:
            reasons = list(map(self._fallback_reasons.__getitem__, cols))
        else:
            lines: dict[int, str] = {}
            base = len(phrases) + 1
            trending_alone, trending_reasons = self._trending_alone, self._trending_reasons
            reasons = []
            for col, code in zip(cols, codes, strict=False):  # codes run past the picks
                if not code:
                    reasons.append(trending_alone[col])
                    continue
                line = lines.get(code) or lines.setdefault(code, _match_line(phrases, code, base))
                trending = trending_reasons[col]
                reasons.append((line, trending) if trending else (line,))
        picks = tuple(map(_new_pick, zip(
            map(self._ids.__getitem__, cols), scores, relevance,
            map(self._trending.__getitem__, cols), reasons, strict=False,  # scores run past
        )))
        return Selection(profile.subscriber_id, picks, trending_fallback=fallback)

    def _excluded(self, col: int, exclusions: list[str]) -> bool:
        text = self._search_text[col]
        return any(re.search(rf"\b{re.escape(word)}\b", text) for word in exclusions)


# A pick's "matches:" line names up to this many phrases, those above this similarity.
MATCH_LINE_PHRASES, MATCH_LINE_MIN_SIMILARITY = 3, 0.02


def _match_codes(
    lexical: np.ndarray, phrase_slots: np.ndarray, counts: np.ndarray, picked: np.ndarray
) -> np.ndarray:
    """Per profile and pick: which of its phrases the pick matches, best first, as a number.

    The phrases above MATCH_LINE_MIN_SIMILARITY, the best MATCH_LINE_PHRASES of them
    (equal similarities keep the subscriber's order), are written as digits in base
    count + 1: sum of (phrase index + 1) * base ** place. 0 means none matched. Profiles
    with the same number of phrases are ranked together, as one (profiles x phrases x
    picks) block.
    """
    codes = np.zeros(picked.shape, dtype=np.int64)
    for count in np.unique(counts[counts > 0]).tolist():
        rows = np.flatnonzero(counts == count)
        similarity = lexical[phrase_slots[rows, :count, None], picked[rows, None, :]]
        # A float64 bound, as the similarities were compared as Python floats before.
        key = np.where(similarity > np.float64(MATCH_LINE_MIN_SIMILARITY), similarity, -1.0)
        best = np.argsort(-key, axis=1, kind="stable")[:, :MATCH_LINE_PHRASES]
        digits = np.where(np.take_along_axis(key, best, axis=1) > 0, best + 1, 0)
        places = (count + 1) ** np.arange(digits.shape[1])
        codes[rows] = (digits * places[None, :, None]).sum(axis=1)
    return codes


def _match_line(phrases: list[str], code: int, base: int) -> str:
    """The "matches: ..." line a `_match_codes` number stands for."""
    named = []
    while code:
        code, digit = divmod(code, base)
        named.append(phrases[digit - 1])
    return "matches: " + ", ".join(named)


# How a profile's topics combine: its best-matching phrase, and its whole text as one query
# (which rewards a paper touching several of the phrases at once).
BLEND_BEST, BLEND_WHOLE = 0.5, 0.5


def _blend(similarity: np.ndarray, phrase_slots: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Per profile: the best of its phrases' rows of `similarity`, blended with its whole
    text's row. A row gathered per phrase position, so a batch costs a few array steps."""
    best = similarity[phrase_slots[:, 0]]
    for position in range(1, phrase_slots.shape[1]):
        np.maximum(best, similarity[phrase_slots[:, position]], out=best)
    best *= BLEND_BEST
    best += BLEND_WHOLE * similarity[whole]
    return best


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

