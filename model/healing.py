"""Token healing: end the prompt before a partial token and make the output start with it.

A prompt that ends in whitespace ("    " at an indented line start, "return " after a word) ends in
a token the model rarely saw at that point: BPE pre-tokenizers glue a run of spaces to the word
that follows it ("       " + " return"), so training text almost never has a bare space token right
before code. Greedy decoding from there writes more spaces or nonsense. Healing takes that text
off the prompt and constrains the first generated tokens to spell it out (any token that agrees
with what is left of it), then strips it from the answer: the model picks the tokenization it
knows ("       " + " return"), the user gets "return".

`TokenTexts` decodes every vocabulary entry once per tokenizer (with an anchor token in front,
so SentencePiece decoders keep the leading space), and `ForcedPrefix` turns "what is left to
spell" into a boolean mask over the vocabulary, cached per remainder: indentation strings repeat.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import torch
from torch import Tensor

__all__ = ["split_heal", "TokenTexts", "ForcedPrefix"]

_TRAILING_BLANKS = re.compile(r"[ \t\r\n]+\Z")
_WORD_PIECE = re.compile(r" ?\w+")
MAX_HEAL_CHARS = 64  # longer runs of blanks are pasted text, not indentation: leave them alone


def split_heal(prefix: str, tokenizer: Any = None) -> tuple[str, str]:
    """(prompt text, text the output must start with).

    Trailing whitespace, line breaks included, always moves out of the prompt: byte-level
    pre-tokenizers keep a line break with the indentation after it ("\\n       " + " return"), so
    a prompt cut after "\\n" is as unusual as one cut after the spaces. With a `tokenizer`, a
    prefix that ends inside a word ("x = getat") also gives back its last token when that token is a
    word piece, so the model can pick "attr" rather than continue from an odd split. Nothing moves
    for an all-blank prefix (no text to anchor on)."""
    m = _TRAILING_BLANKS.search(prefix)
    if m is not None:
        if m.start() == 0 or len(m.group()) > MAX_HEAL_CHARS:
            return prefix, ""
        return prefix[: m.start()], m.group()
    if tokenizer is None or not prefix or not (prefix[-1].isalnum() or prefix[-1] == "_"):
        return prefix, ""
    line = prefix[prefix.rfind("\n") + 1 :][-MAX_HEAL_CHARS:]
    enc = tokenizer.backend.encode(line, add_special_tokens=False)
    if not enc.offsets:
        return prefix, ""
    start, end = enc.offsets[-1]
    piece = line[start:end]
    if end != len(line) or not _WORD_PIECE.fullmatch(piece) or len(piece) >= len(prefix):
        return prefix, ""
    return prefix[: -len(piece)], piece


class TokenTexts:
    """The text each token id adds after other text; built once per tokenizer, shared by threads."""

    _lock = threading.Lock()

    def __init__(self, tokenizer: Any):
        backend = tokenizer.backend
        size = backend.get_vocab_size(with_added_tokens=True)
        anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
        base = tokenizer.decode(anchor) if anchor else ""
        texts = backend.decode_batch([anchor + [i] for i in range(size)], skip_special_tokens=False)
        specials = set(tokenizer.special_tokens.values())
        # A special token never spells text; None also for ids whose bytes are not a whole character.
        self.texts: list[str | None] = [
            None if i in specials or not t.startswith(base) or "\ufffd" in t[len(base) :] else t[len(base) :]
            for i, t in enumerate(texts)
        ]
        self._masks: dict[str, Tensor] = {}

    @classmethod
    def of(cls, tokenizer: Any) -> TokenTexts:
        with cls._lock:
            cached = getattr(tokenizer, "_demi_token_texts", None)
            if cached is None:
                cached = cls(tokenizer)
                tokenizer._demi_token_texts = cached
            return cached

    def mask(self, remainder: str, vocab: int) -> Tensor:
        """Allowed ids [vocab] while `remainder` is still to be spelled: tokens that are a start
        of it, or that start with all of it. Cached per remainder (at most a few hundred)."""
        key = f"{vocab}:{remainder}"
        found = self._masks.get(key)
        if found is None:
            ok = torch.zeros(vocab, dtype=torch.bool)
            ids = [
                i
                for i, t in enumerate(self.texts[:vocab])
                if t and (t.startswith(remainder) or remainder.startswith(t))
            ]
            ok[ids] = True
            if len(self._masks) < 512:
                self._masks[key] = ok
            found = ok
        return found


class ForcedPrefix:
    """Masks the logits until the generated text has spelled `text`; see the module docstring."""

    def __init__(self, tokenizer: Any, text: str):
        self.table = TokenTexts.of(tokenizer)
        self.left = text

    @property
    def done(self) -> bool:
        return not self.left

    def mask(self, vocab: int, device: torch.device | str) -> Tensor | None:
        if not self.left:
            return None
        m = self.table.mask(self.left, vocab)
        if not bool(m.any()):  # no token can spell it (odd vocabulary): stop forcing, never block
            self.left = ""
            return None
        return m.to(device)

    def advance(self, token: int) -> None:
        if not self.left:
            return
        t = self.table.texts[token] if 0 <= token < len(self.table.texts) else None
        self.left = self.left[len(t) :] if t and self.left.startswith(t) else ""
