"""Coverage: whether a paper holds what is distinctive in a topic phrase, so that a phrase
does not match on its common words alone.

A paper that says "learning" and nothing about graphs shares a word with "learning on
graphs", and TF-IDF gives it a little similarity for it; among a day's thousand papers,
hundreds say "learning". Each word of a phrase weighs its IDF, and a paper covers the
phrase as far as the words it holds weigh against the phrase's rarest word: "graphs" alone
covers "learning on graphs", "learning" alone covers a third of it. A phrase's similarity
to a paper is scaled by that coverage.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from .text import WordSlot, word_slots


class PhraseCoverage:
    """The day's papers as the terms each holds, to measure phrases' coverage in batches."""

    def __init__(
        self, vocabulary: dict[str, int], idf: np.ndarray, matrix_t: sparse.csr_matrix,
        acronyms: dict[str, str],
    ) -> None:
        self.vocabulary = vocabulary
        self.idf = idf
        self.acronyms = acronyms
        self.holds = matrix_t.copy()  # terms x papers: 1 where the paper holds the term
        self.holds.data[:] = 1.0
        self.paper_count = matrix_t.shape[1]

    def of(self, phrases: list[str]) -> np.ndarray:
        """Per phrase and paper, its coverage: the IDF of the phrase's words the paper
        holds, over the IDF of the phrase's rarest word, at most 1.

        A phrase's words are its slots (`word_slots`); a paper holds a slot when it holds
        any of the slot's terms (an acronym: also the rarest word of its spelled-out form).
        A slot weighs its rarest stem's IDF; words no paper of the day holds, and those too
        common to be terms, weigh nothing. A phrase with no weighed word is fully covered.
        """
        slot_terms: list[list[int]] = []
        weights: list[tuple[int, float]] = []  # per slot: (phrase, weight)
        for row, phrase in enumerate(phrases):
            for slot in word_slots(phrase, self.acronyms):
                columns, weight = self._slot(slot)
                if columns:
                    weights.append((row, weight))
                    slot_terms.append(columns)
        coverage = np.ones((len(phrases), self.paper_count), dtype=np.float32)
        if not slot_terms:
            return coverage
        pick = sparse.csr_matrix(
            (np.ones(sum(map(len, slot_terms)), dtype=np.float32),
             np.concatenate([np.array(c, dtype=np.int64) for c in slot_terms]),
             np.cumsum([0, *map(len, slot_terms)])),
            shape=(len(slot_terms), self.holds.shape[0]),
        )
        held = (pick @ self.holds).tocsr()  # slots x papers: how many of its terms
        held.data[:] = 1.0
        rows = np.array([row for row, _ in weights])
        values = np.array([weight for _, weight in weights])
        rarest = np.zeros(len(phrases))
        np.maximum.at(rarest, rows, values)
        share = sparse.csr_matrix(
            (values / rarest[rows], (rows, np.arange(len(weights)))),
            shape=(len(phrases), len(weights)),
        )
        weighed = np.flatnonzero(rarest)
        coverage[weighed] = np.minimum((share @ held).toarray()[weighed], 1.0)
        return coverage

    def rarest(self, stems: Sequence[str]) -> tuple[int | None, float]:
        """The column and IDF of the rarest of these stems that is a term today."""
        columns = [c for t in stems if (c := self.vocabulary.get(t)) is not None]
        if not columns:
            return None, 0.0
        column = max(columns, key=lambda c: self.idf[c])
        return column, float(self.idf[column])

    def _slot(self, slot: WordSlot) -> tuple[list[int], float]:
        """The columns that hold a slot, and its weight (none and 0 if it is no term)."""
        columns = [c for t in slot.terms if (c := self.vocabulary.get(t)) is not None]
        weight = self.rarest(slot.stems)[1] or self.rarest(slot.terms)[1]
        spelled, spelled_weight = self.rarest(slot.spelled)
        if spelled is not None:
            columns.append(spelled)
            # An acronym is as common as the papers saying it either way: no rarer than
            # its spelled-out form's rarest word.
            weight = min(weight, spelled_weight) if weight else spelled_weight
        return (columns, weight) if columns else ([], 0.0)
