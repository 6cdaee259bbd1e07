"""From documents to fixed-length training rows, reproducibly.

An epoch is built from (seed, epoch) alone: the documents (long ones cut into chunks at line
boundaries) are shuffled, each becomes a sample (plain or FIM, sometimes with a
`<|file_sep|>path` header, sometimes a repository sample with other files of the same package
first), the docstring/code pairs join them, everything is tokenized and concatenated, cut into
rows of `seq_len + 1` tokens (inputs and shifted targets; consecutive rows share one token) and
the rows are shuffled. So a data position is just (epoch, row), and resuming at one rebuilds
exactly the batches a straight run would have seen.

Raw text is tokenized with special-token strings treated as text; special tokens come only from
the sample structure (see `fim.py`).
"""

from __future__ import annotations

import array
import random
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from demi.model.tokenizer import Tokenizer
from demi.train.corpus import Document
from demi.train.errors import TrainConfigError
from demi.train.fim import FimOptions, Sample, Special, chunk_text, file_head, fim_transform


@dataclass
class DataOptions:
    seq_len: int = 512
    fim_rate: float = 0.5  # share of code samples turned into FIM
    spm_rate: float = 0.5  # share of FIM samples in SPM order (what demi-tiny is sent)
    line_fim_rate: float = 0.0  # share of FIM samples with an editor's hole (fim.line_split_points)
    file_sep_rate: float = 0.5  # share of single-file samples with a <|file_sep|>path header
    repo_rate: float = 0.1  # share of samples preceded by other files of the same package
    max_repo_files: int = 2
    chunk_chars: int = 0  # long files are cut into pieces of this many characters; 0: 3 * seq_len
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise TrainConfigError("seq_len must be at least 8")
        for name in ("fim_rate", "spm_rate", "line_fim_rate", "file_sep_rate", "repo_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise TrainConfigError(f"{name} must be between 0 and 1")

    @property
    def max_chars(self) -> int:
        return self.chunk_chars or 3 * self.seq_len

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, order=True)
class Position:
    """Where the next training row comes from."""

    epoch: int = 0
    row: int = 0


class RowSource(Protocol):
    """What a Trainer reads rows from: PackedData, or a stand-in (train/bench.py's random rows)."""

    options: DataOptions

    def take(self, pos: Position, n: int) -> tuple[torch.Tensor, Position]: ...

    def eval_rows(self, max_rows: int) -> torch.Tensor: ...


def take_shard(source: RowSource, pos: Position, per_rank: int, rank: int, world: int) -> tuple[torch.Tensor, Position]:
    """Rank `rank`'s rows of the next micro-batch of `per_rank * world` rows: the slice
    [rank * per_rank, (rank + 1) * per_rank) of what a one-process run with that batch reads.
    The ranks' slices are disjoint and together are exactly those rows, so N processes see the
    data one process would, in the same steps; every rank moves to the same next position."""
    if world == 1:
        return source.take(pos, per_rank)
    rows, nxt = source.take(pos, per_rank * world)
    return rows[rank * per_rank : (rank + 1) * per_rank], nxt


class SegmentEncoder:
    """Token ids for samples: raw text through the tokenizer (special-token strings as text),
    `Special` segments as their single ids."""

    def __init__(self, tokenizer: Tokenizer):
        from tokenizers import Tokenizer as Backend

        self.backend = Backend.from_str(tokenizer.backend.to_str())
        self.backend.encode_special_tokens = True
        self.backend.no_truncation()
        self.backend.no_padding()
        self.special_ids: dict[str, int] = {}
        for token in tokenizer.special_tokens:
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:  # (one missing from the vocabulary: `special` says so)
                self.special_ids[token] = token_id

    def special(self, token: str) -> int:
        try:
            return self.special_ids[token]
        except KeyError:
            raise TrainConfigError(
                f"the tokenizer has no {token} token; train one with "
                "`demi train tokenizer` (it has all of Demi's special tokens)"
            ) from None

    def _encode_batch(self, texts: Sequence[str]) -> list:
        # encode_batch_fast (tokenizers >= 0.20) computes no character offsets: about twice as fast
        fast = getattr(self.backend, "encode_batch_fast", None)
        return (fast or self.backend.encode_batch)(list(texts), add_special_tokens=False)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [e.ids for e in self._encode_batch(texts)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens each text is."""
        if not texts:
            return []
        return [len(e.ids) for e in self._encode_batch(texts)]

    def encode(self, samples: Sequence[Sample]) -> list[list[int]]:
        """Token ids of each sample."""
        merged: list[list[str | Special]] = []
        texts: list[str] = []
        for sample in samples:
            out: list[str | Special] = []
            for seg in sample:
                if isinstance(seg, str) and out and isinstance(out[-1], str):
                    out[-1] += seg  # adjacent text is one piece, as in a prompt string
                elif not (isinstance(seg, str) and not seg):
                    out.append(seg)
            merged.append(out)
            texts += [s for s in out if isinstance(s, str)]
        encoded = iter(self.encode_texts(texts))
        result = []
        for out in merged:
            ids: list[int] = []
            for seg in out:
                ids += [self.special(seg.token)] if isinstance(seg, Special) else next(encoded)
            result.append(ids)
        return result

    def encode_flat(self, samples: Sequence[Sample], batch: int = 2048) -> torch.Tensor:
        """All samples' ids concatenated, as int32, encoding `batch` samples at a time (a corpus of
        tens of millions of tokens never exists as Python int lists all at once)."""
        flat = array.array("i")
        for lo in range(0, len(samples), batch):
            for ids in self.encode(samples[lo : lo + batch]):
                flat.extend(ids)
        # the tensor keeps the array alive and reads its memory: no second copy of the epoch's ids
        return torch.frombuffer(flat, dtype=torch.int32) if flat else torch.empty(0, dtype=torch.int32)


def pack(sequences: Sequence[Sequence[int]] | torch.Tensor, seq_len: int) -> torch.Tensor:
    """Concatenate and cut into rows [R, seq_len + 1]; row i covers tokens i*L .. i*L+L (the last
    token of a row is the first of the next), the incomplete tail is dropped."""
    if isinstance(sequences, torch.Tensor):
        flat = sequences.to(torch.int32)
    else:
        flat = torch.tensor([t for s in sequences for t in s], dtype=torch.int32)
    rows = (len(flat) - 1) // seq_len if len(flat) > 1 else 0
    if rows == 0:
        return torch.empty((0, seq_len + 1), dtype=torch.int32)
    return flat[: rows * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


class PackedData:
    """Training rows for every epoch, and held-out rows for evaluation."""

    def __init__(
        self,
        train: Sequence[Document],
        tokenizer: Tokenizer,
        options: DataOptions,
        pairs: Sequence[Sample] = (),
        heldout: Sequence[Document] = (),
    ):
        self.options = options
        self.encoder = SegmentEncoder(tokenizer)
        self.pairs = list(pairs)
        self.chunks: list[tuple[Document, str]] = [(d, c) for d in train for c in chunk_text(d.text, options.max_chars)]
        if not self.chunks:
            raise TrainConfigError("no training documents")
        groups: dict[str, list[int]] = {}
        for i, (d, _) in enumerate(self.chunks):
            groups.setdefault(self._group(d), []).append(i)
        self.groups = groups
        self.heldout = list(heldout)
        self._cache: dict[int, torch.Tensor] = {}  # epoch -> rows; the current and the next epoch
        self._building: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _group(doc: Document) -> str:
        top = doc.path.split("/", 1)[0] if "/" in doc.path else ""
        return f"{doc.source}/{top}"

    def epoch_samples(self, epoch: int) -> list[Sample]:
        o = self.options
        rng = random.Random(o.seed * 1_000_003 + epoch)
        fim = FimOptions(o.fim_rate, o.spm_rate, o.line_fim_rate)
        order = list(range(len(self.chunks)))
        rng.shuffle(order)
        samples: list[Sample] = []
        for i in order:
            doc, text = self.chunks[i]
            repo = rng.random() < o.repo_rate
            with_path = rng.random() < o.file_sep_rate
            head: Sample = []
            if repo:
                group = self.groups[self._group(doc)]
                others = [
                    j
                    for j in rng.sample(group, min(len(group), o.max_repo_files + 1))
                    if self.chunks[j][0].path != doc.path
                ][: o.max_repo_files]
                budget = o.max_chars // 2
                files = [(self.chunks[j][0].path, self.chunks[j][1][:budget]) for j in others]
                head = file_head(doc.path, doc.source, files)
            elif with_path:
                head = file_head(doc.path)
            samples.append(head + fim_transform(text, rng, fim))
        samples += self.pairs
        # The pairs join the shuffle, so each epoch interleaves them differently.
        perm = list(range(len(samples)))
        rng.shuffle(perm)
        return [samples[i] for i in perm]

    def rows(self, epoch: int) -> torch.Tensor:
        """[R, seq_len + 1] int32 rows of `epoch`, shuffled (cached for the current epoch, and the
        next one once `prefetch` built it)."""
        with self._lock:
            building = self._building.pop(epoch, None)
        if building is not None:
            building.join()
        with self._lock:
            cached = self._cache.get(epoch)
        if cached is not None:
            self._keep(epoch, cached)  # (and the epochs before it go)
            return cached
        packed = self._build(epoch)
        self._keep(epoch, packed)
        return packed

    def _build(self, epoch: int) -> torch.Tensor:
        packed = pack(self.encoder.encode_flat(self.epoch_samples(epoch)), self.options.seq_len)
        if len(packed) == 0:
            raise TrainConfigError(f"the corpus is too small for one row of {self.options.seq_len} tokens")
        g = torch.Generator().manual_seed(self.options.seed * 1_000_003 + epoch)
        return packed[torch.randperm(len(packed), generator=g)]

    def _keep(self, epoch: int, packed: torch.Tensor) -> None:
        with self._lock:
            self._cache[epoch] = packed
            for old in [e for e in self._cache if e < epoch]:
                del self._cache[old]

    def cached_rows(self, epoch: int) -> int | None:
        """How many rows `epoch` has, when it is built (None otherwise: nothing is built here)."""
        with self._lock:
            got = self._cache.get(epoch)
        return None if got is None else len(got)

    def prefetch(self, epoch: int) -> None:
        """Build `epoch`'s rows in a thread (tokenizing releases the interpreter lock), so a
        trainer on a GPU does not wait at the epoch boundary; the rows are the ones `rows`
        would build, an epoch being a pure function of (seed, epoch). A failure here is raised
        again by `rows`, which builds the epoch itself."""
        with self._lock:
            if epoch in self._cache or epoch in self._building:
                return

            def work() -> None:
                try:
                    packed = self._build(epoch)
                except Exception:  # (rows() builds it again in the caller's thread and raises there)
                    return
                with self._lock:
                    self._cache[epoch] = packed

            thread = threading.Thread(target=work, name=f"demi-epoch-{epoch}", daemon=True)
            self._building[epoch] = thread
        thread.start()

    def take(self, pos: Position, n: int) -> tuple[torch.Tensor, Position]:
        """`n` rows from `pos` on (crossing into the next epoch when needed) and the next position."""
        out = []
        epoch, row = pos.epoch, pos.row
        while n > 0:
            rows = self.rows(epoch)
            if row >= len(rows):
                epoch, row = epoch + 1, 0
                continue
            got = rows[row : row + n]
            out.append(got)
            n -= len(got)
            row += len(got)
        return torch.cat(out).long(), Position(epoch, row)

    def eval_rows(self, max_rows: int) -> torch.Tensor:
        """Held-out files as plain text (no FIM), packed: the first `max_rows` rows."""
        if not self.heldout or max_rows <= 0:
            return torch.empty((0, self.options.seq_len + 1), dtype=torch.long)
        samples: list[Sample] = [[d.text, Special("<|endoftext|>")] for d in self.heldout]
        return pack(self.encoder.encode_flat(samples), self.options.seq_len)[:max_rows].long()

    def rows_per_epoch(self, epoch: int = 0) -> int:
        return len(self.rows(epoch))
