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
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from .text import WordSlot, word_slots

# Coverage 1 (it is capped there), float32 rounding aside.
FULL_COVERAGE = 1.0 - 1e-6


class PhraseCoverage:
    """The day's papers as the terms each holds, to measure phrases' coverage in batches."""

    def __init__(
        self, vocabulary: dict[str, int], idf: np.ndarray, matrix_t: sparse.csr_matrix,
        acronyms: dict[str, str], too_common: frozenset[str] | None = None,
    ) -> None:
        self.vocabulary = vocabulary
        self.idf = idf
        self.acronyms = acronyms
        # The terms the vectorizer dropped for being in most papers (None: not known, and
        # then no word counts as missing from the day).
        self.too_common = too_common
        self.holds = matrix_t.copy()  # terms x papers: 1 where the paper holds the term
        self.holds.data[:] = 1.0
        self.paper_count = matrix_t.shape[1]

    def of(self, phrases: list[str]) -> np.ndarray:
        """Per phrase and paper, its coverage: the IDF of the phrase's words the paper
        holds, over the IDF of the phrase's rarest word, at most 1 (`measure`)."""
        return self.measure(phrases)[0]

    def measure(self, phrases: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per phrase and paper, its coverage (what ranking reads), and whether the paper
        holds the whole phrase (what a pick's "matches:" line claims).

        A phrase's words are its slots (`word_slots`); a paper holds a slot when it holds
        any of the slot's terms, or (an acronym) every word of its spelled-out form: "XAI"
        is held by "explainable AI", not by a paper that only "explains". A slot weighs its
        rarest stem's IDF; words no paper of the day holds, and those too common to be
        terms, weigh nothing. Coverage is the weight of the slots a paper holds over the
        rarest slot's, at most 1: "graphs" alone covers "learning on graphs". A paper holds
        the whole phrase when it covers it fully and no word of the phrase is missing from
        the whole day (though not for being too common to count): coverage weighs such a
        word nothing, so that today's papers are ranked by the words they can hold, but no
        paper matches "brain-computer interfaces" whole on a day no paper says "brain". A
        phrase with no weighed word is fully covered, and held whole unless a word of it is
        missing.
        """
        slots: list[_SlotColumns] = []
        rows: list[int] = []  # per slot: its phrase
        unmet = np.zeros(len(phrases), dtype=bool)
        for row, phrase in enumerate(phrases):
            for slot in word_slots(phrase, self.acronyms):
                columns = self._slot(slot)
                if columns.weight:
                    slots.append(columns)
                    rows.append(row)
                elif self.too_common is not None and self.too_common.isdisjoint(slot.terms):
                    unmet[row] = True
        coverage = np.ones((len(phrases), self.paper_count), dtype=np.float32)
        if slots:
            held = self._held(slots)
            values = np.array([slot.weight for slot in slots])
            rarest = np.zeros(len(phrases))
            np.maximum.at(rarest, rows, values)
            share = sparse.csr_matrix(
                (values / rarest[rows], (rows, np.arange(len(slots)))),
                shape=(len(phrases), len(slots)),
            )
            weighed = np.flatnonzero(rarest)
            coverage[weighed] = np.minimum((share @ held).toarray()[weighed], 1.0)
        whole = coverage >= FULL_COVERAGE
        whole[unmet] = False
        return coverage, whole

    def _held(self, slots: Sequence[_SlotColumns]) -> sparse.csr_matrix:
        """Slots x papers: 1 where the paper holds the slot (any of its own terms, or all of
        its spelled-out words)."""
        held = self._count_held([slot.any_of for slot in slots])
        held.data[:] = 1.0
        if any(slot.all_of for slot in slots):
            counts = self._count_held([slot.all_of for slot in slots]).tocoo()
            needed = np.array([len(slot.all_of) for slot in slots])
            every = counts.data == needed[counts.row]
            spelled = sparse.csr_matrix(
                (np.ones(int(every.sum()), dtype=np.float32),
                 (counts.row[every], counts.col[every])),
                shape=held.shape,
            )
            held = held.maximum(spelled).tocsr()
        return held

    def _count_held(self, column_lists: Sequence[list[int]]) -> sparse.csr_matrix:
        """Per list of term columns and paper: how many of the columns the paper holds."""
        pick = sparse.csr_matrix(
            (np.ones(sum(map(len, column_lists)), dtype=np.float32),
             np.concatenate([np.array(c, dtype=np.int64) for c in column_lists]),
             np.cumsum([0, *map(len, column_lists)])),
            shape=(len(column_lists), self.holds.shape[0]),
        )
        return (pick @ self.holds).tocsr()

    def rarest(self, stems: Sequence[str]) -> tuple[int | None, float]:
        """The column and IDF of the rarest of these stems that is a term today."""
        columns = [c for t in stems if (c := self.vocabulary.get(t)) is not None]
        if not columns:
            return None, 0.0
        column = max(columns, key=lambda c: self.idf[c])
        return column, float(self.idf[column])

    def _slot(self, slot: WordSlot) -> _SlotColumns:
        """The columns that hold a slot, and its weight (none and 0 if it is no term)."""
        columns = [c for t in slot.terms if (c := self.vocabulary.get(t)) is not None]
        weight = self.rarest(slot.stems)[1] or self.rarest(slot.terms)[1]
        spelled = sorted({c for t in slot.spelled if (c := self.vocabulary.get(t)) is not None})
        if spelled:
            # An acronym is as common as the papers saying it either way: no rarer than
            # its spelled-out form's rarest word.
            spelled_weight = float(self.idf[spelled].max())
            weight = min(weight, spelled_weight) if weight else spelled_weight
        if not columns and not spelled:
            return _SlotColumns([], [], 0.0)
        return _SlotColumns(columns, spelled, weight)


@dataclass(frozen=True)
class _SlotColumns:
    """A slot as the day's columns: a paper holds it by any of `any_of`, or by all of
    `all_of` (an acronym's spelled-out words that are terms today)."""

    any_of: list[int]
    all_of: list[int]
    weight: float
