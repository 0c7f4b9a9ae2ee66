"""Text analysis: how a paper's or a subscriber's words become TF-IDF terms.

Words with their inner hyphens, stemmed (Snowball English), stop words out, word bigrams; the
acronyms a corpus defines ("mixture of experts (MoE)") and their expansion in topics typed as
acronyms alone; and `paper_text`, the one text a paper is matched by (lexically and, with the
title once, by sentence embeddings).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np
import snowballstemmer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

# A word, with its inner hyphens: "LoRA", "fMRI", "GPT-4", "low-rank", "3D".
WORD_PATTERN = re.compile(r"\w+(?:[-\u2010\u2011]\w+)*")
# "mixture of experts (MoE)", "sparse autoencoders (SAEs)": an acronym defined in parentheses.
ACRONYM_DEFINITION = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9]{1,9})\s*[);,]")
TOPIC_SEPARATORS = re.compile(r"[,;\n]+")
# Distinct words whose stems are kept: a day's archive and topics hold a few hundred thousand.
STEM_CACHE_SIZE = 1 << 19
# The pure-Python Snowball stemmer keeps its word in the instance: one word at a time.
_SNOWBALL = snowballstemmer.stemmer("english")
_SNOWBALL_LOCK = threading.Lock()


def paper_text(
    title: str, abstract: str, title_repeats: int = 2, keywords: Sequence[str] = ()
) -> str:
    """The text a paper is matched by.

    TF-IDF reads the title twice (the default): it says what the paper is about more densely
    than the abstract. The source's keywords (the daily-papers API's `ai_keywords`) name its
    topics as densely, so they count as the title does, as many times; a paper without them
    reads as it always has. Sentence embeddings read the title once (`title_repeats=1`) and
    no keywords, and their store keys hash that text, so it must not change for them.
    """
    parts = [title] * title_repeats + [abstract]
    if keywords:
        parts += ["; ".join(keywords)] * title_repeats
    return ". ".join(parts)


def split_topics(topics: str) -> list[str]:
    """Split free text into topic phrases on commas, semicolons and new lines."""
    return [phrase for p in TOPIC_SEPARATORS.split(topics) if (phrase := p.strip())]


def _fold(word: str) -> str:
    """A light plural fold ("transformers" -> "transformer", "LLMs" -> "llm"), nothing more."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=STEM_CACHE_SIZE)
def _stem(word: str) -> str:
    """A lower-case word's stem: "robustness" and "robust" meet, so do "optimization" and
    "optimizer"; "university" and "universe" stay apart (Snowball English, Porter's second
    stemmer, not his first).

    The plural fold comes first because Snowball leaves a word without a vowel alone and
    acronyms have none: "LLMs" -> "llm". Words with digits ("gpt4") and of three letters or
    fewer are kept as they are. Cached per word: the day's archive and the topics of every
    reader come through here, and a word recurs thousands of times.
    """
    folded = _fold(word)
    if len(folded) <= 3 or not folded.isalpha():
        return folded
    with _SNOWBALL_LOCK:
        return str(_SNOWBALL.stemWord(folded))


@lru_cache(maxsize=STEM_CACHE_SIZE)
def _word_terms(word: str) -> tuple[str, ...]:
    """A word's terms: its stem, and the word itself (plural-folded) when that differs.

    Snowball also joins words that mean different things ("decoder" and "decode",
    "general" and "generalization"): the word itself, a rarer term, lets an exact match
    count more than a match by stem alone.
    """
    stem, folded = _stem(word), _fold(word)
    return (stem,) if stem == folded else (stem, folded)


def readable_terms(terms: Iterable[str], texts: Iterable[str]) -> list[str]:
    """Terms as people write them: each stem as the word of `texts` most often behind it
    ("optim" -> "optimization"), a bigram word by word; a stem no text holds stays as it is."""
    wanted = [term.split(" ") for term in terms]
    stems = {stem for parts in wanted for stem in parts}
    behind: dict[str, Counter[str]] = {}
    for text in texts:
        for match in WORD_PATTERN.finditer(text.lower()):
            for word in re.split(r"[-\u2010\u2011]", match.group()):
                if (stem := _stem(word)) in stems:
                    behind.setdefault(stem, Counter())[word] += 1
    return [
        " ".join(behind[stem].most_common(1)[0][0] if stem in behind else stem for stem in parts)
        for parts in wanted
    ]


def analyze(text: str) -> list[str]:
    """Terms of a text: lower-case words' stems (and the words where they differ), stop
    words out, and bigrams of the stems.

    A hyphenated word counts as its parts and as the parts joined, so "low-rank" matches
    "low rank" and "lowrank", and "fine-tuning" matches "finetuning"; "GPT-4" stays "gpt4"
    as a term of its own as well as the bigram "gpt 4".
    """
    words, extra = split_words(text)
    return words + extra + bigrams(words)


def split_words(text: str) -> tuple[list[str], list[str]]:
    """A text's words (stemmed, no stop words), and the other terms of its words: each
    word where it differs from its stem, each hyphenated word joined up."""
    words: list[str] = []
    extra: list[str] = []
    for match in WORD_PATTERN.finditer(text.lower()):
        parts = re.split(r"[-\u2010\u2011]", match.group())
        if len(parts) > 1:
            extra.append(_stem("".join(parts)))
        for part in parts:
            if part not in ENGLISH_STOP_WORDS:
                stem, *exact = _word_terms(part)
                words.append(stem)
                extra += exact
    return words, extra


@dataclass(frozen=True)
class WordSlot:
    """A word of a topic phrase, as the terms a paper may say it with (any one will do)."""

    stems: tuple[str, ...]  # its parts' stems: "fine-tuning" is "fine", "tune"
    terms: tuple[str, ...]  # the terms that say it: "graph"; "finetun" or "fine tune"
    spelled: tuple[str, ...] = ()  # an acronym's spelled-out stems


def word_slots(phrase: str, acronyms: dict[str, str]) -> list[WordSlot]:
    """The words of a phrase that carry meaning (stop words out), one slot each, once."""
    slots: dict[tuple[str, ...], WordSlot] = {}
    for match in WORD_PATTERN.finditer(phrase):
        parts = re.split(r"[-\u2010\u2011]", match.group().lower())
        stems = tuple(_stem(p) for p in parts if p not in ENGLISH_STOP_WORDS)
        if not stems or stems in slots:
            continue
        # A hyphenated word is said joined up ("finetuning") or as its words ("fine tuning").
        terms = stems if len(stems) == 1 else (_stem("".join(parts)), *bigrams(list(stems)))
        long_form = _long_form_of(match.group(), acronyms)
        spelled = tuple(split_words(long_form)[0]) if long_form else ()
        slots[stems] = WordSlot(stems, terms, spelled)
    return list(slots.values())


def bigrams(words: list[str]) -> list[str]:
    return [f"{a} {b}" for a, b in pairwise(words)]


class DayVectorizer(TfidfVectorizer):
    """scikit-learn's TF-IDF, keeping the terms its fit dropped for being in too many
    documents (`too_common_`; scikit-learn no longer keeps them, as `stop_words_`, since
    1.8): a topic word missing from the vocabulary is either one of those, which no paper
    needs to say, or one no paper of the day says (`PhraseCoverage.measure`)."""

    too_common_: frozenset[str]

    def _limit_features(self, X: Any, vocabulary: dict[str, int], *args: Any,
                        **kwargs: Any) -> Any:
        before = set(vocabulary)
        limited = super()._limit_features(X, vocabulary, *args, **kwargs)
        self.too_common_ = frozenset(before.difference(vocabulary))
        return limited


def make_vectorizer(corpus_size: int = 1000) -> DayVectorizer:
    """TF-IDF over `analyze` terms; very common terms are dropped only in a real corpus."""
    return DayVectorizer(
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
    """Schwartz & Hearst: the shortest tail of `text` whose letters spell `short` in order.

    Their rule that the first letter starts a word has one exception: an X may stand for a
    word's "ex" ("explainable AI (XAI)", "extreme gradient boosting (XGBoost)").
    """
    s, t = len(short) - 1, len(text) - 1
    while s >= 0:
        char = short[s].lower()
        if not char.isalnum():
            s -= 1
            continue
        while t >= 0 and (
            text[t].lower() != char
            or (s == 0 and t > 0 and text[t - 1].isalnum() and not _ex_word(char, text, t))
        ):
            t -= 1
        if t < 0:
            return None
        t -= 1
        s -= 1
    return text[text.rfind(" ", 0, t + 1) + 1 :].strip() or None


def _ex_word(char: str, text: str, t: int) -> bool:
    """Whether `text[t]` is the x of a word starting "ex", which an acronym's X stands for."""
    return char == "x" and text[t - 1] in "eE" and (t < 2 or not text[t - 2].isalnum())


def expand_acronyms(text: str, acronyms: dict[str, str], everywhere: bool = False) -> str:
    """A topics text with its acronyms followed by their spelled-out forms: in a phrase of
    nothing but acronyms ("MoE" -> "MoE mixture-of-experts"), or with `everywhere` in
    every phrase ("alignment of VLMs" -> "alignment of VLMs vision-language models").

    An acronym is a word with two capitals or more; "VLMs" finds a "VLM" the corpus
    defined. A phrase that already spells an acronym out ("fine-tuning (FT)") gets no
    second copy. Phrase by phrase, in place: the text expanded is its phrases expanded, so a
    topics text's row can be summed from its phrases' (`QueryScorer.composed_rows`).
    """
    words = WORD_PATTERN.findall(text)
    if not acronyms or not words or not (everywhere or all(map(_is_acronym, words))):
        return text
    pieces = re.split(f"({TOPIC_SEPARATORS.pattern})", text)
    return "".join(
        piece if k % 2 else _expand_phrase(piece, acronyms) for k, piece in enumerate(pieces)
    )


def acronyms_in(phrase: str, acronyms: dict[str, str]) -> list[tuple[str, str]]:
    """The acronyms of a phrase that the corpus spells out: (its term, the spelled-out
    form), "alignment of VLMs" -> [("vlm", "vision-language models")]."""
    found = []
    for match in WORD_PATTERN.finditer(phrase):
        long_form = _long_form_of(match.group(), acronyms)
        if long_form is not None:
            found.append((_stem(match.group().lower()), long_form))
    return found


def _is_acronym(word: str) -> bool:
    return sum(c.isupper() for c in word) >= 2


def _expand_phrase(phrase: str, acronyms: dict[str, str]) -> str:
    spelled = _plain(phrase)

    def with_long_form(match: re.Match[str]) -> str:
        word = match.group()
        long_form = _long_form_of(word, acronyms)
        if long_form is None or _plain(long_form) in spelled:
            return word
        return f"{word} {long_form}"

    return WORD_PATTERN.sub(with_long_form, phrase)


def _long_form_of(word: str, acronyms: dict[str, str]) -> str | None:
    if not _is_acronym(word):
        return None
    key = word.lower()
    if key not in acronyms and key.endswith("s"):
        key = key[:-1]
    long_form = acronyms.get(key)
    # A separator inside it would split the phrase it is put in.
    return TOPIC_SEPARATORS.sub(" ", long_form) if long_form else None


def _plain(text: str) -> str:
    """Lower-case words separated by single spaces, to see whether a text holds another."""
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "
