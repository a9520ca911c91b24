"""Near-duplicate detection: MinHash over 3-grams with LSH banding, in numpy.

Two texts whose estimated Jaccard similarity (of their 3-gram sets, after case and
whitespace folding) is at least the threshold end up in one cluster. With 64 permutations
in 16 bands of 4, a pair at similarity 0.75 shares a band with probability 0.998; every
candidate pair is then verified on the full signature. 3-grams because one edit in a short
query changes few of them.

The signatures are computed for a batch of texts at once: the 3-grams are the texts' UTF-8
bytes read three at a time (a 24-bit number each, so no hashing of strings), and each of the
64 hash functions is a multiply-shift on all of a batch's 3-grams, reduced per text with
``np.minimum.reduceat``. Measured on the 2-core machine (with another job running), 50,000
synthetic Banking77 prompts (benchmarks/curation.py's): 2.1 s, against 7.0 s for the former loop
that hashed each text's 3-gram strings with ``zlib.crc32``; the clusters are the same (34,294
near duplicates at 200,000 rows before and after). Curation computes the signatures once, for
the near-duplicate removal and the leak check both (``signatures``, ``clusters_of``); it used
to compute them three times.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

NUM_PERM, BANDS = 64, 16
_BATCH_BYTES = 1 << 18  # 128 MiB of hashes per batch (3-grams x 64 permutations x 8 bytes)
_PAIRS_PER_CHUNK = 1 << 19  # 2 x 128 MiB of signatures gathered per chunk


def _hash_parameters(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Multiply-shift (the high 32 bits of a*x + b mod 2**64, a odd) is universal. A 32-bit affine map was
    # measured too: half the memory, but its estimates spread wider (8.6% more merges at 50,000 rows,
    # borderline ones), so it is not used.
    a = rng.integers(1, 1 << 63, NUM_PERM, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 1 << 63, NUM_PERM, dtype=np.uint64)
    return a, b


def _normalized(text: str) -> bytes:
    data = " ".join(text.split()).casefold().encode("utf-8")  # str.split: the whitespace of regex's \s, faster
    return data.ljust(3, b"\0")  # a text under 3 bytes is one 3-gram of itself


def signatures(texts: list[str], seed: int = 1) -> np.ndarray:
    """A MinHash signature (64 32-bit values) per text."""
    a, b = _hash_parameters(seed)
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    encoded = [_normalized(text) for text in texts]
    start = 0
    while start < len(encoded):
        end, size = start, 0
        while end < len(encoded) and (size < _BATCH_BYTES or end == start):
            size += len(encoded[end])
            end += 1
        out[start:end] = _batch_signatures(encoded[start:end], a, b)
        start = end
    return out


def _batch_signatures(encoded: list[bytes], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    codes = (data[:-2] << np.uint64(16)) | (data[1:-1] << np.uint64(8)) | data[2:]
    # Keep the 3-grams that lie inside one text: drop the last two positions of each text.
    inside = np.ones(len(codes), dtype=bool)
    text_ends = np.cumsum(lengths)
    for back in (1, 2):  # the 3-grams starting at a text's last two bytes cross into the next text
        cut = text_ends - back
        inside[cut[cut < len(codes)]] = False
    grams = codes[inside]
    first_gram = np.r_[0, np.cumsum(lengths - 2)[:-1]]
    # One row per permutation, so that the reduction runs along contiguous rows: 5x faster than along columns.
    hashed = a[:, None] * grams  # wraps modulo 2**64, as multiply-shift wants
    hashed += b[:, None]
    hashed >>= np.uint64(32)
    return np.minimum.reduceat(hashed, first_gram, axis=1).T


def clusters_of(sigs: np.ndarray, threshold: float = 0.75) -> np.ndarray:
    """A cluster id per signature; near-duplicates share one (the smallest index among them).

    Within each band, texts with the same band key are candidates of the first of them; a candidate
    whose full signature agrees on at least ``threshold`` of the permutations is an edge, and the
    clusters are the connected components of all edges (scipy), all of it without a Python loop.
    """
    n = len(sigs)
    if n < 2:
        return np.arange(n)
    rows = NUM_PERM // BANDS
    heads, members = [], []
    for band in range(BANDS):
        # The band's values folded into one 64-bit key: sorting those instead of the raw 16 bytes took curation
        # of 200,000 rows from 28.0 s to 21.3 s; two bands that collide (odds ~1e-9) only make a candidate.
        keys = np.zeros(n, dtype=np.uint64)
        for column in sigs[:, band * rows : (band + 1) * rows].T:
            keys = keys * np.uint64(0x9E3779B97F4A7C15) + column
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        new_bucket = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        bucket_head = order[np.flatnonzero(new_bucket)[np.cumsum(new_bucket) - 1]]
        candidates = ~new_bucket
        heads.append(bucket_head[candidates])
        members.append(order[candidates])
    head, member = np.concatenate(heads), np.concatenate(members)
    # In chunks: at 1,000,000 rows (benchmarks/curation.py) there are 12 million candidate pairs; comparing them all at
    # once held 7.7 GiB and took 19.6 s, in chunks of half a million 0.25 GiB and 6.4 s.
    similar = np.empty(len(head), dtype=bool)
    for start in range(0, len(head), _PAIRS_PER_CHUNK):
        chunk = slice(start, start + _PAIRS_PER_CHUNK)
        similar[chunk] = (sigs[head[chunk]] == sigs[member[chunk]]).sum(axis=1) >= threshold * NUM_PERM
    graph = scipy.sparse.coo_matrix((np.ones(int(similar.sum()), dtype=np.int8), (head[similar], member[similar])),
                                    shape=(n, n))
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    smallest = np.full(component.max() + 1, n)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component]
