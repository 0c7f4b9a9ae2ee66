"""Evaluate: how well each ranking method orders the seed papers for the labelled profiles.

The labelled set lives in `eval/` (profiles, graded judgments; see eval/README.md). Every method
ranks the whole corpus for each profile; we report nDCG@10 (gains 2/1/0, log2 discount, ideal
from the judgments) and precision@10 (grade >= 1, and grade 2 only), averaged over profiles,
separately per split. Methods:

- `tfidf`: the baseline, plain scikit-learn `TfidfVectorizer()` fitted on the corpus, cosine
  with the whole topics string;
- `bm25`: Okapi BM25 (k1 1.2, b 0.75, Lucene's idf) over plain lower-case words, whole string;
- `ours-lexical`: the production `score.DayIndex` ranking with trending off (the seeds have no
  engagement) and no semantic part: exactly what a subscriber gets without the extra;
- `embeddings`: cosine of the bundled MiniLM sentence embeddings alone (semantic extra);
- `hybrid`: the production `DayIndex` with the semantic part (semantic extra).

The production methods go through `build_day_index` and `DayIndex.select`, with the digest's
own cut-offs (minimum relevance, near-duplicates, diversity), so the numbers measure what a
subscriber receives, not a re-implementation of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer, TfidfVectorizer

from .. import embeddings
from ..ingest import parse, title_key
from ..score import CandidatePaper, FeedbackSignal, Profile, RankingKnobs, build_day_index
from ..settings import PROJECT_DIR, Settings

DEFAULT_EVAL_DIR = PROJECT_DIR / "eval"
DEFAULT_SEEDS_DIR = PROJECT_DIR / "inputs" / "seeds"
K = 10
SPLITS = ("dev", "test")
EVAL_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)

# A ranker takes the corpus and the profiles' topics and returns, per profile, corpus
# positions best first (at least K of them when it has that many it would show).
Ranker = Callable[[Sequence[CandidatePaper], Sequence[str]], list[list[int]]]


@dataclass(frozen=True)
class EvalProfile:
    id: str
    topics: str
    split: str


@dataclass(frozen=True)
class EvalSet:
    profiles: tuple[EvalProfile, ...]
    grades: dict[str, dict[str, int]]  # profile id -> paper title_key -> grade (unjudged: 0)

    def split(self, name: str) -> list[EvalProfile]:
        return [p for p in self.profiles if name == "all" or p.split == name]


@dataclass(frozen=True)
class Metrics:
    ndcg: float
    precision: float  # grade >= 1 counts
    precision_2: float  # only grade 2 counts

    def as_dict(self) -> dict[str, float]:
        return {
            f"ndcg@{K}": round(self.ndcg, 4),
            f"p@{K}": round(self.precision, 4),
            f"p2@{K}": round(self.precision_2, 4),
        }


@dataclass
class EvalReport:
    """Mean metrics per split and method, and each profile's, for the table and --json."""

    splits: list[str]
    methods: list[str]
    means: dict[str, dict[str, Metrics]] = field(default_factory=dict)  # split -> method -> m
    per_profile: dict[str, dict[str, Metrics]] = field(default_factory=dict)  # method -> id -> m
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it did not run
    corpus_size: int = 0
    feedback: dict[str, dict[str, Metrics]] = field(default_factory=dict)  # split -> reader -> m

    def table(self) -> str:
        lines = [f"Corpus: {self.corpus_size} papers. Metrics averaged over profiles."]
        for split in self.splits:
            count = next(iter(self.means[split].values()), None)
            lines.append("")
            lines.append(f"split={split}" + ("" if count else " (no profiles)"))
            lines.append(f"{'method':<14} {'nDCG@10':>8} {'P@10':>6} {'P@10(2)':>8}")
            for method in self.methods:
                m = self.means[split].get(method)
                if m is not None:
                    lines.append(
                        f"{method:<14} {m.ndcg:>8.3f} {m.precision:>6.3f} {m.precision_2:>8.3f}"
                    )
        for method, why in self.skipped.items():
            lines.append(f"({method} not run: {why})")
        if self.feedback:
            lines += ["", "Feedback learning: the second digest (the first one's papers are "
                      "excluded and so are their judgments)", "after a simulated reader rated "
                      "the first digest by its grades (2: more like this, 1: click, 0: less)"]
            for split, by_reader in self.feedback.items():
                lines.append(f"split={split}")
                for reader, m in by_reader.items():
                    lines.append(f"  {reader:<24} nDCG@10 {m.ndcg:.3f}  P@10 {m.precision:.3f}"
                                 f"  P@10(2) {m.precision_2:.3f}")
        return "\n".join(lines)

    def as_json(self) -> str:
        return json.dumps(
            {
                "corpus_size": self.corpus_size,
                "k": K,
                "splits": {
                    split: {m: v.as_dict() for m, v in by_method.items()}
                    for split, by_method in self.means.items()
                },
                "per_profile": {
                    m: {pid: v.as_dict() for pid, v in by_id.items()}
                    for m, by_id in self.per_profile.items()
                },
                "skipped": self.skipped,
                "feedback": {
                    split: {reader: m.as_dict() for reader, m in by_reader.items()}
                    for split, by_reader in self.feedback.items()
                },
            },
            indent=2,
        )


# --- the labelled set and the corpus ---------------------------------------------------


def load_eval_set(eval_dir: Path = DEFAULT_EVAL_DIR) -> EvalSet:
    """Profiles and graded judgments from `eval_dir` (profiles.json, judgments.jsonl)."""
    raw = json.loads((Path(eval_dir) / "profiles.json").read_text(encoding="utf-8"))
    profiles = tuple(EvalProfile(p["id"], p["topics"], p["split"]) for p in raw)
    grades: dict[str, dict[str, int]] = {p.id: {} for p in profiles}
    with (Path(eval_dir) / "judgments.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                j = json.loads(line)
                grades.setdefault(j["profile"], {})[j["paper"]] = int(j["grade"])
    return EvalSet(profiles, grades)


def load_corpus(seeds_dir: Path = DEFAULT_SEEDS_DIR) -> tuple[list[CandidatePaper], list[str]]:
    """The seed papers, parsed as the papers page they are, once per title; and their keys."""
    files = sorted(Path(seeds_dir).glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"No seed pages (*.txt) in {seeds_dir}; pass --seeds DIR.")
    papers: list[CandidatePaper] = []
    keys: list[str] = []
    for path in files:
        for record in parse(path.read_bytes(), "page", str(path)).records:
            key = title_key(record.title)
            if key in keys:
                continue
            keys.append(key)
            papers.append(
                CandidatePaper(
                    id=len(papers),
                    title=record.title,
                    abstract=record.abstract,
                    source=record.source,
                    first_seen_at=EVAL_TIME,
                )
            )
    return papers, keys


# --- metrics ----------------------------------------------------------------------------


def dcg(gains: Sequence[float]) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranked_grades: Sequence[int], all_grades: Sequence[int], k: int = K) -> float:
    """nDCG@k with the grade as gain; the ideal ranking is the judged grades, best first."""
    ideal = dcg(sorted(all_grades, reverse=True)[:k])
    return dcg(list(ranked_grades)[:k]) / ideal if ideal > 0 else 0.0


def precision_at_k(ranked_grades: Sequence[int], k: int = K, min_grade: int = 1) -> float:
    """Share of the first k places holding a paper of at least `min_grade` (empty places: 0)."""
    return sum(1 for g in list(ranked_grades)[:k] if g >= min_grade) / k


def profile_metrics(ranked_keys: Sequence[str], grades: dict[str, int]) -> Metrics:
    ranked = [grades.get(key, 0) for key in ranked_keys[:K]]
    return Metrics(
        ndcg=ndcg_at_k(ranked, list(grades.values())),
        precision=precision_at_k(ranked, min_grade=1),
        precision_2=precision_at_k(ranked, min_grade=2),
    )


# --- rankers ----------------------------------------------------------------------------


def _top(scores: np.ndarray, k: int = K) -> list[int]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [int(i) for i in order if scores[i] > 0]


def rank_tfidf(corpus: Sequence[CandidatePaper], topics: Sequence[str]) -> list[list[int]]:
    """The baseline: scikit-learn's defaults, fitted on the corpus, cosine with the whole text."""
    vectorizer = TfidfVectorizer()
    docs = vectorizer.fit_transform([f"{p.title}. {p.abstract}" for p in corpus])
    scores = (vectorizer.transform(topics) @ docs.T).toarray()
    return [_top(row) for row in scores]


def rank_bm25(
    corpus: Sequence[CandidatePaper], topics: Sequence[str], k1: float = 1.2, b: float = 0.75
) -> list[list[int]]:
    """Okapi BM25 over lower-case words without stop words, with Lucene's always-positive idf.

    Our own few lines rather than the rank-bm25 package: that package's Okapi idf goes negative
    for terms in more than half the documents, and a sparse matrix scores every profile at once.
    """
    counter = CountVectorizer(stop_words=sorted(ENGLISH_STOP_WORDS))
    tf = counter.fit_transform([f"{p.title}. {p.abstract}" for p in corpus]).tocsr().astype(float)
    n_docs = tf.shape[0]
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    lengths = np.asarray(tf.sum(axis=1)).ravel()
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    rows = np.repeat(np.arange(n_docs), np.diff(tf.indptr))
    weighted = tf.copy()
    weighted.data = tf.data * (k1 + 1) / (tf.data + norm[rows]) * idf[tf.indices]
    query = counter.transform(topics)
    query.data = np.ones_like(query.data)  # each query term counts once
    scores = (query @ weighted.T).toarray()
    return [_top(row) for row in scores]


def rank_embeddings(
    corpus: Sequence[CandidatePaper], topics: Sequence[str], store_dir: Path
) -> list[list[int]]:
    """Cosine of sentence embeddings alone: the whole topics text against each paper."""
    encoder = embeddings.load_encoder()
    vectors = embeddings.EmbeddingStore(store_dir).vectors(corpus, encoder)
    scores = encoder.encode(list(topics)) @ vectors.T
    return [_top(row) for row in scores]


def production_ranker(
    knobs: RankingKnobs, semantic_store: Path | None = None, semantic_weight: float = 0.0
) -> Ranker:
    """Rank with the production DayIndex: the corpus as one day's candidates, no trending."""
    knobs = replace(knobs, trending_boost=0.0)

    def rank(corpus: Sequence[CandidatePaper], topics: Sequence[str]) -> list[list[int]]:
        semantic = None
        if semantic_store is not None:
            semantic = embeddings.semantic_index(corpus, semantic_store, semantic_weight)
        index = build_day_index(corpus, [], EVAL_TIME, knobs, semantic=semantic)
        profiles = [Profile(subscriber_id=i, topics=t, limit=K) for i, t in enumerate(topics)]
        return [[pick.paper_id for pick in s.picks] for s in index.select(profiles)]

    return rank


def methods_for(settings: Settings) -> tuple[dict[str, Ranker], dict[str, str]]:
    """The methods this installation can run, and why any other did not."""
    knobs = RankingKnobs.from_settings(settings)
    store = Path(settings.data_dir) / "embeddings" / "eval"
    methods: dict[str, Ranker] = {
        "tfidf": rank_tfidf,
        "bm25": rank_bm25,
        "ours-lexical": production_ranker(knobs),
    }
    skipped: dict[str, str] = {}
    if embeddings.available():
        methods["embeddings"] = lambda corpus, topics: rank_embeddings(corpus, topics, store)
        methods["hybrid"] = production_ranker(
            knobs, semantic_store=store, semantic_weight=settings.semantic_weight
        )
    else:
        why = "install the semantic extra: pip install 'paper-digest[semantic]'"
        skipped = {"embeddings": why, "hybrid": why}
    return methods, skipped


# --- the whole evaluation ---------------------------------------------------------------


def evaluate(
    eval_set: EvalSet,
    corpus: Sequence[CandidatePaper],
    keys: Sequence[str],
    methods: dict[str, Ranker],
    splits: Sequence[str] = ("dev",),
) -> EvalReport:
    """Rank the corpus for every profile of `splits` with every method, and score the ranks."""
    report = EvalReport(splits=list(splits), methods=list(methods), corpus_size=len(corpus))
    profiles = [p for split in splits for p in eval_set.split(split)]
    for name, ranker in methods.items():
        ranked = ranker(corpus, [p.topics for p in profiles])
        report.per_profile[name] = {
            p.id: profile_metrics([keys[i] for i in positions], eval_set.grades[p.id])
            for p, positions in zip(profiles, ranked, strict=True)
        }
    for split in splits:
        ids = [p.id for p in eval_set.split(split)]
        report.means[split] = {
            name: _mean([report.per_profile[name][pid] for pid in ids]) for name in methods
        } if ids else {}
    return report


# A simulated reader of the first digest: what they do with a paper of each grade.
VOTES = {2: 1.0, 1: 0.5, 0: -1.0}  # more like this, a click, less like this
CLICKS = {2: 0.5, 1: 0.5}  # a reader who only clicks what interests them
READERS = {"no feedback": {}, "after clicks only": CLICKS, "after votes": VOTES}


def evaluate_feedback(
    eval_set: EvalSet,
    corpus: Sequence[CandidatePaper],
    keys: Sequence[str],
    knobs: RankingKnobs,
    splits: Sequence[str] = ("dev",),
) -> dict[str, dict[str, Metrics]]:
    """How much the second digest gains from the reader's feedback on the first.

    Day one: the production ranking's top 10 for each profile. A simulated reader acts on each
    of those papers by its grade (READERS). Day two: the same corpus ranked again for the
    profile, without the papers already sent, once per reader; judged on the papers not yet
    sent, so the gain is in finding *new* relevant papers, not in repeating the liked ones.
    """
    knobs = replace(knobs, trending_boost=0.0)
    index = build_day_index(corpus, [], EVAL_TIME, knobs)
    profiles = [p for split in splits for p in eval_set.split(split)]
    first = index.select([Profile(i, p.topics, limit=K) for i, p in enumerate(profiles)])
    shown = [[pick.paper_id for pick in selection.picks] for selection in first]
    per_reader: dict[str, dict[str, Metrics]] = {}
    for reader, action in READERS.items():
        second = index.select([
            Profile(i, p.topics, limit=K, sent_paper_ids=frozenset(sent),
                    feedback=_simulated_feedback(corpus, keys, sent, eval_set.grades[p.id], action))
            for i, (p, sent) in enumerate(zip(profiles, shown, strict=True))
        ])
        per_reader[reader] = {
            p.id: profile_metrics(
                [keys[pick.paper_id] for pick in selection.picks],
                _unsent_grades(eval_set.grades[p.id], {keys[i] for i in sent}),
            )
            for p, sent, selection in zip(profiles, shown, second, strict=True)
        }
    return {
        split: {reader: _mean([by_id[p.id] for p in eval_set.split(split)])
                for reader, by_id in per_reader.items()}
        for split in splits if eval_set.split(split)
    }


def _unsent_grades(grades: dict[str, int], sent: set[str]) -> dict[str, int]:
    return {key: grade for key, grade in grades.items() if key not in sent}


def _simulated_feedback(
    corpus: Sequence[CandidatePaper], keys: Sequence[str], sent: Sequence[int],
    grades: dict[str, int], action: dict[int, float],
) -> tuple[FeedbackSignal, ...]:
    return tuple(
        FeedbackSignal(i, action[grade], corpus[i].title, corpus[i].text)
        for i in sent
        if (grade := grades.get(keys[i], 0)) in action
    )


def run_eval(
    settings: Settings,
    eval_dir: Path = DEFAULT_EVAL_DIR,
    seeds_dir: Path = DEFAULT_SEEDS_DIR,
    split: str = "dev",
    only: Sequence[str] = (),
) -> EvalReport:
    """`digest eval`: load the set and the corpus, run every available method, report."""
    eval_set = load_eval_set(eval_dir)
    corpus, keys = load_corpus(seeds_dir)
    methods, skipped = methods_for(settings)
    if only:
        methods = {name: ranker for name, ranker in methods.items() if name in only}
        skipped = {name: why for name, why in skipped.items() if name in only}
    splits = list(SPLITS) if split == "all" else [split]
    report = evaluate(eval_set, corpus, keys, methods, splits)
    report.skipped = skipped
    if not only or "feedback" in only:
        report.feedback = evaluate_feedback(
            eval_set, corpus, keys, RankingKnobs.from_settings(settings), splits
        )
    return report


def _mean(metrics: list[Metrics]) -> Metrics:
    return Metrics(
        ndcg=float(np.mean([m.ndcg for m in metrics])),
        precision=float(np.mean([m.precision for m in metrics])),
        precision_2=float(np.mean([m.precision_2 for m in metrics])),
    )

