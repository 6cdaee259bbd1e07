"""Tiny tokenizers for tests: built in well under a second, written into a given directory.

Two families cover what Demi meets in the wild: byte-level BPE (GPT-2, Qwen, demi-tiny) and
Llama-style BPE with a Metaspace pre-tokenizer and byte fallback. Both train on the same small
built-in text, which deliberately holds no emoji and no CJK so those fall back to byte tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from demi.model.bpe_train import train_bpe_tokenizer
from demi.model.tokenizer import Tokenizer

_SNIPPET = '''\
import os
import sys
from pathlib import Path


def read_config(path: str, default: dict | None = None) -> dict:
    """Read a config file and return its values; the default when it is missing."""
    if not os.path.exists(path):
        return dict(default or {})
    with open(path, encoding="utf-8") as handle:
        return parse(handle.read())


class Cache:
    def __init__(self, size: int = 128) -> None:
        self.size = size
        self.items: dict[str, object] = {}

    def get(self, key: str) -> object | None:
        return self.items.get(key)

    def put(self, key: str, value: object) -> None:
        if len(self.items) >= self.size:
            self.items.pop(next(iter(self.items)))
        self.items[key] = value


def main(argv: list[str]) -> int:
    for index, name in enumerate(argv):
        print(f"{index}: {name}")  # café, naïve, résumé, señor, Straße
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def training_texts() -> list[str]:
    """A few KB of Python-like text (the snippet with renamed identifiers)."""
    names = ["value", "count", "result", "item", "data", "node", "token", "line"]
    return [_SNIPPET.replace("key", name).replace("Cache", name.title() + "Store") for name in names]


def make_bytelevel_tokenizer(out_dir: str | Path, vocab_size: int = 400) -> Tokenizer:
    """Byte-level BPE with Demi's special tokens and a ChatML template (via `bpe_train`)."""
    return train_bpe_tokenizer(training_texts(), out_dir, vocab_size=vocab_size, min_frequency=2)


def make_llama_tokenizer(out_dir: str | Path, vocab_size: int = 400) -> Tokenizer:
    """Llama-style BPE: Metaspace, byte fallback, `<s>` added by the post-processor.

    The vocabulary is laid out like Llama's: `<unk>`, `<s>`, `</s>`, then the 256 `<0xNN>` byte
    tokens, then the learned pieces, so unknown characters fall back to bytes.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer_tok = BackendTokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - len(byte_tokens), 64),
        min_frequency=2,
        special_tokens=specials,
        show_progress=False,
    )
    trainer_tok.train_from_iterator(training_texts(), trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    # Re-number: specials, bytes, then the learned vocabulary in its own order.
    vocab = {tok: i for i, tok in enumerate(specials + byte_tokens)}
    for tok, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(tok, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tok = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens(specials)
    tok.save(str(out / "tokenizer.json"))

    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(specials)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "added_tokens_decoder": added,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return Tokenizer.from_dir(out)
