"""FIM line exact match of the model being trained, cheap enough to run at every evaluation.

The training curve (curve.py) wants, beside the held-out loss, the number the project steers
by: does the model complete the rest of a line. `demi eval fim` measures that on an exported
model through the session layer (token healing, the engine's prompt); this probe measures it
inside the trainer on the training weights, greedily, with a KV cache: a fixed set of held-out
lines (`evaluate.line_samples`, the cursor after a word inside the line, where no healing is
needed), each prompt in the layout demi-tiny is sent (`<|file_sep|>path`, then SPM), cut so it
fits the training sequence length. Its numbers are comparable along one run and between runs,
not with `demi eval fim`'s (other lines, shorter prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from demi.model.decoder import KVCache, Transformer
from demi.train.corpus import Document
from demi.train.data import SegmentEncoder
from demi.train.evaluate import LineSample, exact_match, first_line, line_samples
from demi.train.fim import EOT, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, Special, file_head

MAX_NEW_TOKENS = 24


class FimProbe:
    """`lines` held-out lines, fixed by `seed`, scored by `exact_match(model)`."""

    def __init__(
        self,
        heldout: Sequence[Document],
        encoder: SegmentEncoder,
        seq_len: int,
        lines: int,
        seed: int = 0,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ):
        self.encoder, self.max_new = encoder, max_new_tokens
        room = max(8, seq_len - max_new_tokens)
        # about 3.4 characters a token in code: the prompt's parts sized to fill `room` or a bit over
        samples = line_samples(
            [(d.path, d.text) for d in heldout],
            lines,
            seed=seed,
            mid_line_rate=1.0,
            prefix_chars=int(room * 2.6),
            suffix_chars=int(room * 0.7),
        )
        self.items: list[tuple[list[int], LineSample]] = []
        self.cut = 0  # prompts whose prefix was cut to fit
        for s in samples:
            if s.kind != "mid_line":
                continue
            prompt = file_head(s.path) + [Special(FIM_SUFFIX), s.suffix, Special(FIM_PREFIX), s.prefix]
            ids = encoder.encode([prompt])[0]
            middle = encoder.special(FIM_MIDDLE)
            if len(ids) + 1 > room:  # keep the end of the prefix: the tokens nearest the cursor
                head = ids.index(encoder.special(FIM_PREFIX)) + 1
                ids = ids[:head] + ids[max(head, len(ids) - (room - 1) // 2) :]
                if len(ids) + 1 > room:
                    continue
                self.cut += 1
            self.items.append((ids + [middle], s))
        self.stop = {encoder.special(EOT)}

    def __len__(self) -> int:
        return len(self.items)

    @torch.no_grad()
    def exact_match(self, model: Transformer) -> float | None:
        """Share of the lines the model completes exactly (greedy, fp32); None without lines."""
        if not self.items:
            return None
        was_training = model.training
        model.eval()
        device = model.device
        hits = 0
        try:
            with torch.autocast(device.type, enabled=False):
                for ids, sample in self.items:
                    hits += exact_match(first_line(self._complete(model, ids, device)), sample.target)
        finally:
            model.train(was_training)
        return hits / len(self.items)

    def _complete(self, model: Transformer, ids: list[int], device: torch.device) -> str:
        cache = KVCache(model.config, len(ids) + self.max_new, 1, dtype=torch.float32, device=device)
        logits = model(torch.tensor([ids], device=device), 0, cache, last_only=True)
        out: list[int] = []
        for i in range(self.max_new):
            nxt = int(logits[0, -1].argmax())
            if nxt in self.stop:
                break
            out.append(nxt)
            text = self.encoder.backend.decode(out, skip_special_tokens=False)
            if "\n" in text:
                return text
            logits = model(torch.tensor([[nxt]], device=device), len(ids) + i, cache, last_only=True)
        return self.encoder.backend.decode(out, skip_special_tokens=False)
