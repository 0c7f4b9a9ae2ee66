"""Queries: how much each of the day's papers matches a batch of subscribers' topics.

Each profile's comma-separated phrases and its whole topics text are queries. Subscribers
share phrases heavily, so a batch scores each distinct query once, and the day's
`QueryScorer` keeps what it learnt about a query (its TF-IDF row, its phrases' term counts, a
phrase's similarity to every paper) for the next batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2

from .coverage import PhraseCoverage
from .fusion import zscore_fusion
from .model import SemanticIndex
from .text import acronyms_in, bigrams, expand_acronyms, split_words

# Distinct query texts whose TF-IDF rows a day's index keeps (subscribers share topics, and
# the custom analyser is most of `transform`'s cost); past this many it starts again, so a
# long-lived index stays small (a row is a few dozen numbers).
MAX_CACHED_QUERIES = 50_000
# Phrases whose similarity to every paper a day's index keeps, the first ones seen: 2,000
# rows of 2,000 papers are 20 MB (a float and a bool per paper).
MAX_CACHED_PHRASE_ROWS = 2_000
SEMANTIC_FLOOR = 0.15
# How a profile's topics combine: its best-matching phrase, and its whole text as one query
# (which rewards a paper touching several of the phrases at once).
BLEND_BEST, BLEND_WHOLE = 0.5, 0.5

QueryRow = tuple[np.ndarray, np.ndarray]  # a normalised TF-IDF row: (term indices, values)


@dataclass(frozen=True)
class Lexical:
    """Each distinct query's lexical similarity to each paper (queries x papers), and
    whether the paper covers the query whole (`coverage.py`; a whole topics text: always)."""

    similarity: np.ndarray
    whole: np.ndarray


@dataclass(frozen=True)
class PhraseTerms:
    """A topic phrase's raw term counts in the day's vocabulary (column, count)."""

    columns: list[int]
    counts: list[float]
    first: str | None  # its first and last words, for the bigrams across commas
    last: str | None


@dataclass(frozen=True)
class BatchQueries:
    """A batch's distinct query texts, and where each profile's queries are among them."""

    texts: list[str]  # every distinct phrase, then every whole topics text not seen yet
    splits: list[list[str]]  # per text: its phrases
    # Per profile, the rows of its phrases (profiles x most phrases; a shorter row repeats
    # its first phrase, a profile without phrases its whole text).
    phrase_slots: np.ndarray
    whole: np.ndarray  # per profile: the row of its whole topics text


def batch_queries(
    phrase_lists: list[list[str]], counts: np.ndarray, topics: list[str]
) -> BatchQueries:
    """Number a batch's distinct queries: each profile's phrases and its whole topics text
    (`counts`: how many phrases each profile has)."""
    slot: dict[str, int] = {}  # distinct query -> its row
    splits: list[list[str]] = []
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
    return BatchQueries(list(slot), splits, phrase_slots, np.array(whole))


def blend(similarity: np.ndarray, phrase_slots: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Per profile: the best of its phrases' rows of `similarity`, blended with its whole
    text's row. A row gathered per phrase position, so a batch costs a few array steps."""
    best = similarity[phrase_slots[:, 0]]
    for position in range(1, phrase_slots.shape[1]):
        np.maximum(best, similarity[phrase_slots[:, position]], out=best)
    best *= BLEND_BEST
    best += BLEND_WHOLE * similarity[whole]
    return best


class QueryScorer:
    """The similarity of topic queries to the day's papers, lexical and (optionally) semantic."""

    def __init__(
        self,
        vectorizer: TfidfVectorizer,
        acronyms: dict[str, str],
        matrix_t: sparse.csr_matrix,
        semantic: SemanticIndex | None,
    ) -> None:
        self.vectorizer = vectorizer
        self.acronyms = acronyms
        self.matrix_t = matrix_t  # terms x papers
        self.semantic = semantic
        self.term_count, self.paper_count = matrix_t.shape
        self._query_rows: dict[str, QueryRow] = {}
        self._phrase_counts: dict[str, PhraseTerms] = {}
        # See lexical_similarity: a phrase's similarity row and its whole-coverage row.
        self._phrase_similarity: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.coverage = PhraseCoverage(
            vectorizer.vocabulary_, vectorizer.idf_, matrix_t, acronyms,
            getattr(vectorizer, "too_common_", None),
        )

    def relevance(
        self, phrase_lists: list[list[str]], counts: np.ndarray, topics: list[str]
    ) -> tuple[np.ndarray, Lexical, np.ndarray]:
        """Per profile: blended relevance per paper. Also the lexical similarity of each
        distinct query to each paper (and which papers cover each), and per profile the
        rows of its phrases in that (`BatchQueries.phrase_slots`).

        Each distinct query of the batch is scored once (one sparse product, one encoder
        call with the semantic extra) and each profile gathers its rows.
        """
        batch = batch_queries(phrase_lists, counts, topics)
        relevance = np.zeros((len(phrase_lists), self.paper_count), dtype=np.float32)
        lexical = self.lexical_similarity(batch.texts, batch.splits)
        matching = np.flatnonzero(counts)  # profiles with at least one phrase
        slots, whole_slots = batch.phrase_slots[matching], batch.whole[matching]
        relevance[matching] = blend(lexical.similarity, slots, whole_slots)
        semantic = self.semantic_similarity(batch.texts)
        if semantic is not None and self.semantic is not None:
            sem = blend(semantic, slots, whole_slots)
            relevance[matching] = zscore_fusion(relevance[matching], sem, self.semantic.weight)
        return relevance, lexical, batch.phrase_slots

    def lexical_similarity(self, queries: list[str], splits: list[list[str]]) -> Lexical:
        """Cosine of each query with each paper (queries x papers), and which papers
        cover each query whole.

        A single phrase's row is kept for the day (the popular ones come back in every
        batch, a whole topics text seldom does), so the sparse product is only for the rest.
        """
        similarity = np.empty((len(queries), self.paper_count), dtype=np.float32)
        whole = np.ones((len(queries), self.paper_count), dtype=bool)
        fresh = []
        for row, query in enumerate(queries):
            known = self._phrase_similarity.get(query)
            if known is None:
                fresh.append(row)
            else:
                similarity[row], whole[row] = known
        if fresh:
            rows = self.query_matrix([queries[i] for i in fresh], [splits[i] for i in fresh])
            similarity[fresh] = (rows @ self.matrix_t).toarray()
            self._spelled_out(similarity, fresh, queries, splits)
            self._covered(similarity, whole, fresh, queries, splits)
            room = MAX_CACHED_PHRASE_ROWS - len(self._phrase_similarity)
            for row in fresh:
                if room > 0 and len(splits[row]) == 1 and splits[row][0] == queries[row]:
                    self._phrase_similarity[queries[row]] = (
                        similarity[row].copy(), whole[row].copy()
                    )
                    room -= 1
        return Lexical(similarity, whole)

    def _covered(
        self, similarity: np.ndarray, whole: np.ndarray, fresh: list[int], queries: list[str],
        splits: list[list[str]],
    ) -> None:
        """A phrase's similarity scaled by how much of it each paper holds (`coverage.py`):
        "learning" alone is little of "learning on graphs"; `whole` marks the papers that
        hold all of it that counts (a pick's line says whether it matches a phrase or only
        partly). Not a whole topics text's: it names several topics, and a paper on one of
        them is a match."""
        phrases = [row for row in fresh if splits[row] == [queries[row]]]
        if phrases:
            coverage, whole[phrases] = self.coverage.measure([queries[row] for row in phrases])
            similarity[phrases] *= coverage

    def _spelled_out(
        self, similarity: np.ndarray, fresh: list[int], queries: list[str],
        splits: list[list[str]],
    ) -> None:
        """A phrase with acronyms among other words ("alignment of VLMs") matches papers as
        it does and as they would spell it ("alignment of vision-language models"), the
        better of the two per paper. A phrase of nothing but acronyms already reads as both
        (`expand_acronyms`); a whole topics text keeps the words as typed."""
        rows = {
            row: self.spelled_out_row(queries[row]) for row in fresh
            if splits[row] == [queries[row]]
            and expand_acronyms(queries[row], self.acronyms) == queries[row]
            and acronyms_in(queries[row], self.acronyms)
        }
        if rows:
            spelled = list(rows)
            matrix = sparse.vstack(list(rows.values())).tocsr()
            similarity[spelled] = np.maximum(
                similarity[spelled], (matrix @ self.matrix_t).toarray()
            )

    def spelled_out_row(self, phrase: str) -> sparse.csr_matrix:
        """The phrase's TF-IDF row with each acronym's weight handed to its spelled-out
        form's terms ("vlm" to "vision", "languag", "vision languag" ...), shared by their
        own weights: the acronym counts once either way, and a long form's common words
        ("large language models") cannot outweigh the phrase's other words.

        The weight handed over is the acronym's, at most as rare as its spelled-out form's
        rarest word: "LLM" is rarer than the idea, which papers mostly spell out.
        """
        idf, vocabulary = self.vectorizer.idf_, self.vectorizer.vocabulary_
        weights = self._tf_idf(self.phrase_terms(phrase))
        for term, long_form in acronyms_in(phrase, self.acronyms):
            spelled = self._tf_idf(self.phrase_terms(long_form))
            if not spelled:
                continue
            rarest = self.coverage.rarest(split_words(long_form)[0])[1]
            column = vocabulary.get(term)
            if column in weights:
                share = weights.pop(column) * min(1.0, rarest / float(idf[column]))
            else:  # no paper today says the acronym
                share = rarest
            norm = float(np.sqrt(sum(w * w for w in spelled.values())))
            for col, w in spelled.items():
                weights[col] = weights.get(col, 0.0) + share * w / norm
        row = sparse.csr_matrix(
            (np.array(list(weights.values()), dtype=np.float32),
             (np.zeros(len(weights), dtype=np.int64), np.array(list(weights), dtype=np.int64))),
            shape=(1, self.term_count),
        )
        inplace_csr_row_normalize_l2(row)
        return row

    def _tf_idf(self, terms: PhraseTerms) -> dict[int, float]:
        """A phrase's TF-IDF weights by column, before the norm (as `composed_rows`)."""
        idf = self.vectorizer.idf_
        return {
            c: (1.0 + float(np.log(n))) * float(idf[c])
            for c, n in zip(terms.columns, terms.counts, strict=True)
        }

    def query_matrix(self, queries: list[str], splits: list[list[str]]) -> sparse.csr_matrix:
        """The queries' acronym-expanded, normalised TF-IDF rows, as `transform` gives them.

        Rows are kept by query text, since subscribers share topics and every batch brings
        the same ones back; `splits` are the texts' phrases, from which a new text's row is
        built (`_build_rows`).
        """
        rows = [self._query_rows.get(q) for q in queries]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            self._make_room(len(missing))
            built = self._build_rows([queries[i] for i in missing], [splits[i] for i in missing])
            for i, row in zip(missing, built, strict=True):
                rows[i] = row
        return self._stack([row for row in rows if row is not None])  # all of them by now

    def _make_room(self, needed: int) -> None:
        """Start the caches again rather than let a long-lived index grow without bound."""
        if len(self._query_rows) + needed > MAX_CACHED_QUERIES:
            self._query_rows.clear()
            self._phrase_counts.clear()

    def _build_rows(self, queries: list[str], splits: list[list[str]]) -> list[QueryRow]:
        """New queries' rows, kept for the day: each text summed from its phrases' term
        counts (`composed_rows`, each phrase analysed once a day). A text of nothing but
        acronyms is read with their spelled-out forms (`expand_acronyms`)."""
        matrix = self.composed_rows([
            [expand_acronyms(p, self.acronyms, everywhere=True) for p in phrases]
            if expand_acronyms(query, self.acronyms) != query else phrases
            for query, phrases in zip(queries, splits, strict=True)
        ])
        built: list[QueryRow] = []
        for k, query in enumerate(queries):
            lo, hi = matrix.indptr[k], matrix.indptr[k + 1]
            built.append((matrix.indices[lo:hi], matrix.data[lo:hi]))
            self._query_rows[query] = built[-1]
        return built

    def _stack(self, rows: list[QueryRow]) -> sparse.csr_matrix:
        """Kept rows as one CSR matrix, without copying them one by one into a builder."""
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(indices) for indices, _ in rows], out=indptr[1:])
        return sparse.csr_matrix(
            (np.concatenate([values for _, values in rows]),
             np.concatenate([indices for indices, _ in rows]), indptr),
            shape=(len(rows), self.term_count),
        )

    def composed_rows(self, texts: list[list[str]]) -> sparse.csr_matrix:
        """TF-IDF rows of topic texts (given as their phrases), summed from the phrases'
        counts: what `transform` gives for the text with its acronyms expanded, to the bit.

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
                terms = self._phrase_counts.get(phrase) or self.phrase_terms(phrase)
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
            shape=(len(texts), self.term_count),
        ).tocsr()  # sums the counts of a term two phrases share
        matrix.sort_indices()
        np.log(matrix.data, out=matrix.data)
        matrix.data += 1.0
        matrix.data *= self.vectorizer.idf_[matrix.indices]
        inplace_csr_row_normalize_l2(matrix)  # `normalize` without its input checks
        return matrix

    def phrase_terms(self, phrase: str) -> PhraseTerms:
        """A phrase's term counts in today's vocabulary, and its first and last word."""
        words, extra = split_words(phrase)
        found: dict[int, float] = {}
        for term in words + extra + bigrams(words):
            col = self.vectorizer.vocabulary_.get(term)
            if col is not None:
                found[col] = found.get(col, 0.0) + 1.0
        terms = PhraseTerms(
            list(found), list(found.values()),
            words[0] if words else None, words[-1] if words else None,
        )
        self._phrase_counts[phrase] = terms
        return terms

    def semantic_similarity(self, queries: list[str]) -> np.ndarray | None:
        """Embedding cosine per query (acronyms expanded) and paper, the unrelated floor at 0."""
        if self.semantic is None:
            return None
        expanded = [expand_acronyms(q, self.acronyms) for q in queries]
        cosine = self.semantic.encoder.encode(expanded) @ self.semantic.vectors.T
        # MiniLM puts unrelated texts near 0.1 and on-topic ones at 0.4-0.7; move the floor
        # to 0 so an off-topic paper gains nothing and the scale is comparable to TF-IDF's.
        return np.clip((cosine - SEMANTIC_FLOOR) / (1.0 - SEMANTIC_FLOOR), 0.0, 1.0)
