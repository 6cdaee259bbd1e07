"""Exact and near-duplicate removal for source files, one file at a time.

Exact: files equal after normalizing line endings and trailing whitespace.
Near: a MinHash signature of the file's 5-grams of code tokens, with locality-sensitive hashing
(bands of rows) to find candidate pairs, and the signatures' agreement (an estimate of the
Jaccard similarity) to decide; the first file (in the corpus' deterministic order) of a
near-duplicate group is kept.

The signature is one-permutation MinHash (Li, Owen and Zhang, NIPS 2012) with optimal
densification (Shrivastava, ICML 2017): each 5-gram is hashed once and falls into one of
`num_perm` bins, a bin keeps its smallest hash, and an empty bin (a small file) takes the value
of the first full bin in its own fixed random order of the bins. That costs one hash a gram where
`num_perm` independent permutations cost `num_perm`, which is what lets a 2-core machine
deduplicate a registry's worth of code (2 GB) in minutes; the agreement of two signatures
estimates the Jaccard similarity with MinHash's spread (tests/train/test_train_corpus.py).

`fingerprints` is a pure function of the texts (a batch is hashed in a few tensor operations);
`Deduplicator` holds what has been kept so far and judges one fingerprint at a time, so a corpus
is deduplicated as it streams past and never has to be in memory at once.
"""

from __future__ import annotations

import array
import hashlib
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_TOKEN = re.compile(rb"\w+|[^\w\s]")  # on UTF-8 bytes: ASCII words and single punctuation bytes
_PRIME = (1 << 31) - 1  # products of two values below it stay below 2**62 in int64
_BASE = 1_000_003  # the polynomial that combines a gram's token hashes
_GRAM = 5
_UNSET = 1 << 40  # above every bin value (values are below 2**31)
BATCH = 256  # texts fingerprinted together: a few tensor operations for the batch, memory bounded


def normalized(text: str) -> str:
    """Line endings unified and trailing whitespace dropped (what 'exactly equal' means here)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def exact_key(text: str) -> bytes:
    return hashlib.sha256(normalized(text).encode("utf-8", "surrogatepass")).digest()[:16]


def _token_hashes(text: str) -> array.array:
    """crc32 of each code token (words and punctuation) of the text."""
    return array.array("I", map(zlib.crc32, _TOKEN.findall(text.encode("utf-8", "surrogatepass"))))


@dataclass
class MinHasher:
    """One-permutation MinHash: `num_perm` bins and one hash h(x) = (a x + b) mod p fixed by `seed`."""

    num_perm: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.a = int(torch.randint(1, _PRIME, (1,), generator=g))
        self.b = int(torch.randint(0, _PRIME, (1,), generator=g))
        self.probe_order = torch.stack([torch.randperm(self.num_perm, generator=g) for _ in range(self.num_perm)])

    def signatures(self, texts: Sequence[str], min_shingles: int = 16) -> list[torch.Tensor | None]:
        """Each text's `num_perm` values (int32): each bin's smallest hash, an empty bin filled as
        in optimal densification (below). None for a text with fewer than `min_shingles` distinct
        5-grams. The texts are hashed together: a handful of tensor operations for the batch."""
        n, bins = _GRAM, self.num_perm
        parts = [_token_hashes(t) for t in texts]
        lengths = torch.tensor([len(p) for p in parts], dtype=torch.int64)
        out: list[torch.Tensor | None] = [None] * len(texts)
        if not parts or int(lengths.max()) < n:
            return out
        h = torch.frombuffer(bytearray(b"".join(p.tobytes() for p in parts)), dtype=torch.int32)
        h = (h.to(torch.int64) & 0xFFFFFFFF) % _PRIME
        grams = h[: len(h) - n + 1].clone()
        for i in range(1, n):
            grams = (grams * _BASE + h[i : len(h) - n + 1 + i]) % _PRIME
        # keep the grams that lie inside one text, keyed by their text's number
        owner = torch.repeat_interleave(torch.arange(len(parts)), lengths)[: len(grams)]
        local = torch.arange(len(grams)) - (torch.cumsum(lengths, 0) - lengths)[owner]
        inside = local <= lengths[owner] - n
        keys = torch.unique(owner[inside] * _PRIME + grams[inside])
        owner, grams = keys // _PRIME, keys % _PRIME
        counts = torch.bincount(owner, minlength=len(parts))
        v = (grams * self.a + self.b) % _PRIME
        sig = torch.full((len(parts) * bins,), _UNSET, dtype=torch.int64)
        sig.scatter_reduce_(0, owner * bins + v % bins, v // bins, reduce="amin", include_self=True)
        sig = sig.view(len(parts), bins)
        full = sig != _UNSET
        if not bool(full.all()):
            # each empty bin takes the value of the first full bin in its own fixed random order
            # of the bins (optimal densification: files agree on it about as often as their
            # full bins do, where borrowing from the neighbour correlates the bins)
            order = self.probe_order  # (bins, bins)
            first = full[:, order].to(torch.int8).argmax(2)  # (files, bins): position in the order
            borrowed = sig.gather(1, order.gather(1, first.T).T)
            sig = torch.where(full, sig, borrowed)
        sig = sig.to(torch.int32)  # bin values are below 2**24
        for i, c in enumerate(counts.tolist()):
            if c >= min_shingles:
                out[i] = sig[i].clone()
        return out


@dataclass
class Fingerprint:
    """What deduplication needs of one file: its exact key and (if long enough) its signature
    with the keys of its bands (the locality-sensitive hashing's buckets)."""

    exact: bytes
    signature: torch.Tensor | None
    bands: list[int] | None = None


def band_keys(signatures: torch.Tensor, bands: int) -> list[list[int]]:
    """Each signature's bands of rows, each hashed to one integer tagged with the band's number."""
    rows = signatures.view(len(signatures), bands, -1).to(torch.int64)
    h = torch.zeros(rows.shape[:2], dtype=torch.int64)
    for r in range(rows.shape[2]):
        h = (h * _BASE + rows[:, :, r]) % _PRIME
    return (h + torch.arange(bands) * (1 << 31)).tolist()


def fingerprints(
    texts: Sequence[str], hasher: MinHasher, min_shingles: int = 16, near: bool = True, bands: int = 16
) -> list[Fingerprint]:
    """Files with fewer than `min_shingles` distinct 5-grams (a two-line `__init__.py`) get no
    signature: tiny files look alike without being copies, so they are only deduplicated exactly."""
    sigs = hasher.signatures(texts, min_shingles) if near else [None] * len(texts)
    have = [s for s in sigs if s is not None]
    keys = iter(band_keys(torch.stack(have), bands) if have else [])
    return [Fingerprint(exact_key(t), s, None if s is None else next(keys)) for t, s in zip(texts, sigs)]


@dataclass
class Verdict:
    kept: bool
    duplicate_of: int = -1  # the kept file's number, for a duplicate
    similarity: float = 1.0  # 1.0 for an exact duplicate
    exact: bool = False


@dataclass
class Deduplicator:
    """What has been kept so far; `judge` decides a new file (numbered by the caller) and keeps it
    unless it duplicates one kept before. Memory: about 1 KB a kept file with a signature (its
    signature in one table, its bands in the buckets, its exact key)."""

    near_threshold: float | None = 0.85
    num_perm: int = 128
    bands: int = 16
    min_shingles: int = 16
    seed: int = 0
    _seen: dict[bytes, int] = field(default_factory=dict)
    _buckets: dict[int, int | list[int]] = field(default_factory=dict)  # band key -> table rows
    _numbers: list[int] = field(default_factory=list)  # table row -> the file's number

    def __post_init__(self) -> None:
        if self.near_threshold is not None and not 0 < self.near_threshold <= 1:
            raise ValueError("near_threshold must be in (0, 1]")
        if self.num_perm % self.bands:
            raise ValueError("num_perm must be a multiple of bands")
        self.hasher = MinHasher(self.num_perm, self.seed)
        self._table = torch.empty((1024, self.num_perm), dtype=torch.int32)

    def fingerprints(self, texts: Sequence[str]) -> list[Fingerprint]:
        near = self.near_threshold is not None
        return fingerprints(texts, self.hasher, self.min_shingles, near, self.bands)

    def judge(self, number: int, fp: Fingerprint) -> Verdict:
        if fp.exact in self._seen:
            return Verdict(False, self._seen[fp.exact], 1.0, exact=True)
        self._seen[fp.exact] = number
        sig, keys = fp.signature, fp.bands
        if self.near_threshold is None or sig is None or keys is None:
            return Verdict(True)
        cands = list(dict.fromkeys(c for k in keys for c in _members(self._buckets.get(k))))
        if cands:
            sims = (self._table[cands] == sig).float().mean(1)
            best = int(sims.argmax())
            if float(sims[best]) >= self.near_threshold:
                return Verdict(False, self._numbers[cands[best]], float(sims[best]))
        row = len(self._numbers)
        if row == len(self._table):
            self._table = torch.cat([self._table, torch.empty_like(self._table)])
        self._table[row] = sig
        self._numbers.append(number)
        for k in keys:
            held = self._buckets.get(k)
            if held is None:
                self._buckets[k] = row
            elif isinstance(held, int):
                self._buckets[k] = [held, row]
            else:
                held.append(row)
        return Verdict(True)


def _members(held: int | list[int] | None) -> list[int]:
    if held is None:
        return []
    return [held] if isinstance(held, int) else held


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
    `near_threshold` None turns near-duplicate detection off."""
    dedup = Deduplicator(near_threshold, num_perm, bands, min_shingles, seed)
    result = DedupResult([], [], [])
    for lo in range(0, len(texts), BATCH):
        for i, fp in enumerate(dedup.fingerprints(texts[lo : lo + BATCH]), lo):
            v = dedup.judge(i, fp)
            if v.kept:
                result.keep.append(i)
            elif v.exact:
                result.exact.append((i, v.duplicate_of))
            else:
                result.near.append((i, v.duplicate_of, v.similarity))
    return result
