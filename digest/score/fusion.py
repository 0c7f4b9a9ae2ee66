"""Fusion: the lexical and the semantic similarity of a profile's topics, made one relevance.

TF-IDF cosines and embedding cosines live on different scales: a paper squarely on a topic
scores 0.3-0.6 in TF-IDF and the rest near 0, while MiniLM puts unrelated papers near 0.1 and
on-topic ones at 0.4-0.7. A raw blend of the two (`(1 - w) * tfidf + w * cosine`) is badly
calibrated: a little weight lifts every off-topic paper by a lot. So each is standardised per
query first (z-scores over the day's papers, which is what "how unusual is this paper for
this reader" means on either scale), mixed with the weight, and the mix is put back on the
lexical scale of that query (its mean and spread), so that the cut-offs, the trending boost
and the reasons keep reading a relevance they know.
"""

from __future__ import annotations

import numpy as np


def zscore_fusion(lexical: np.ndarray, semantic: np.ndarray, weight: float) -> np.ndarray:
    """Per row (one query or profile over the day's papers): `(1 - w) * z(lexical) +
    w * z(semantic)`, rescaled to the row's lexical mean and standard deviation and clipped at 0.

    With weight 0 this is the lexical row itself; a row whose lexical similarities are all
    equal (nothing matched) has no lexical spread to map onto, and keeps its lexical values:
    embeddings alone never make a match out of a topic no paper shares a word with.
    """
    if weight <= 0:
        return lexical
    lex = lexical.astype(np.float64)
    sem = semantic.astype(np.float64)
    mean, spread = lex.mean(axis=1, keepdims=True), lex.std(axis=1, keepdims=True)
    sem_spread = sem.std(axis=1, keepdims=True)
    z_lex = np.divide(lex - mean, spread, out=np.zeros_like(lex), where=spread > 0)
    z_sem = np.divide(
        sem - sem.mean(axis=1, keepdims=True),
        sem_spread,
        out=np.zeros_like(sem),
        where=sem_spread > 0,
    )
    fused = mean + spread * ((1.0 - weight) * z_lex + weight * z_sem)
    np.clip(fused, 0.0, None, out=fused)
    return np.where(spread > 0, fused, lex).astype(lexical.dtype)
