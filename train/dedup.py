"""Exact and near-duplicate removal for source files.

Exact: files equal after normalizing line endings and trailing whitespace.
Near: MinHash over 5-grams of code tokens, with locality-sensitive hashing (bands of rows) to
find candidate pairs, and the MinHash Jaccard estimate to decide; the first file (in the
corpus' deterministic order) of a near-duplicate group is kept. The permutation hashing runs
vectorized in torch, so ten thousand files take seconds.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_TOKEN = re.compile(r"\w+|[^\w\s]")
_PRIME = (1 << 31) - 1  # Mersenne prime; a * x stays below 2**62 in int64


def normalized(text: str) -> str:
    """Line endings unified and trailing whitespace dropped (what 'exactly equal' means here)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def exact_key(text: str) -> str:
    return hashlib.sha256(normalized(text).encode("utf-8", "surrogatepass")).hexdigest()


def shingles(text: str, n: int = 5) -> list[int]:
    """32-bit hashes of the distinct n-grams of code tokens (words and punctuation)."""
    toks = _TOKEN.findall(text)
    if len(toks) < n:
        return []
    grams = {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}
    return sorted(zlib.crc32(g.encode("utf-8", "surrogatepass")) for g in grams)


@dataclass
class MinHasher:
    """`num_perm` hash functions h(x) = (a x + b) mod p, fixed by `seed`."""

    num_perm: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.a = torch.randint(1, _PRIME, (self.num_perm,), generator=g, dtype=torch.int64)
        self.b = torch.randint(0, _PRIME, (self.num_perm,), generator=g, dtype=torch.int64)

    def signature(self, shingle_hashes: Sequence[int]) -> torch.Tensor:
        x = torch.tensor(shingle_hashes, dtype=torch.int64) % _PRIME
        out = torch.full((self.num_perm,), _PRIME, dtype=torch.int64)
        for lo in range(0, len(x), 8192):  # bounded memory for huge files
            chunk = x[lo : lo + 8192, None]
            out = torch.minimum(out, ((chunk * self.a + self.b) % _PRIME).min(dim=0).values)
        return out


@dataclass
class DedupResult:
    keep: list[int]  # indices into the input, in input order
    exact: list[tuple[int, int]]  # (dropped, kept)
    near: list[tuple[int, int, float]]  # (dropped, kept, estimated Jaccard)


def deduplicate(
    texts: Sequence[str],
    near_threshold: float | None = 0.85,
    num_perm: int = 128,
    bands: int = 16,
    min_shingles: int = 16,
    seed: int = 0,
) -> DedupResult:
    """Indices of the texts to keep: the first of every exact or near-duplicate group.

    `near_threshold` None turns near-duplicate detection off. Files with fewer than
    `min_shingles` distinct 5-grams (a two-line `__init__.py`) are only deduplicated exactly:
    tiny files look alike without being copies.
    """
    if near_threshold is not None and not 0 < near_threshold <= 1:
        raise ValueError("near_threshold must be in (0, 1]")
    if num_perm % bands:
        raise ValueError("num_perm must be a multiple of bands")
    rows = num_perm // bands
    hasher = MinHasher(num_perm, seed)
    seen: dict[str, int] = {}
    buckets: dict[tuple[int, bytes], list[int]] = {}
    signatures: dict[int, torch.Tensor] = {}
    result = DedupResult([], [], [])
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in seen:
            result.exact.append((i, seen[key]))
            continue
        seen[key] = i
        if near_threshold is None:
            result.keep.append(i)
            continue
        sh = shingles(text)
        if len(sh) < min_shingles:
            result.keep.append(i)
            continue
        sig = hasher.signature(sh)
        band_keys = [(b, sig[b * rows : (b + 1) * rows].numpy().tobytes()) for b in range(bands)]
        best, best_sim = -1, 0.0
        for cand in dict.fromkeys(c for k in band_keys for c in buckets.get(k, ())):
            sim = float((signatures[cand] == sig).float().mean())
            if sim > best_sim:
                best, best_sim = cand, sim
        if best >= 0 and best_sim >= near_threshold:
            result.near.append((i, best, best_sim))
            continue
        signatures[i] = sig
        for k in band_keys:
            buckets.setdefault(k, []).append(i)
        result.keep.append(i)
    return result
