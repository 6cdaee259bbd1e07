"""Shared builders for the training-pipeline tests (no tests here): a small source tree with a
license, a byte-level tokenizer with Demi's special tokens, and micro model shapes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from demi.model.bpe_train import train_bpe_tokenizer
from demi.model.config import ModelConfig
from demi.model.tokenizer import Tokenizer

MIT = (
    "MIT License\n\nCopyright (c) 2024 Demi tests\n\nPermission is hereby granted, free of charge, to any "
    "person obtaining a copy of this software...\n"
)

_TEMPLATE = '''\
"""Module {n}: helpers for {topic}."""

import math
from collections import defaultdict

WEIGHTS = {weights}


def {fn}_total(values, scale=1.0):
    """Return the sum of values times scale."""
    total = 0.0
    for v in values:
        total += v * scale
    return total


def {fn}_groups(items, key):
    """Group the items by the key function and return a dict of lists."""
    groups = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    return dict(groups)


class {cls}Store:
    def __init__(self, size={n}):
        self.size = size
        self.items = {{}}

    def get(self, name, default=None):
        """Return the item called name, or default when it is missing."""
        value = self.items.get(name, default)
        return value

    def put(self, name, value):
        if len(self.items) >= self.size:
            self.items.pop(next(iter(self.items)))
        self.items[name] = value
        return math.sqrt(len(self.items))
'''

TOPICS = [
    "parsing",
    "caching",
    "numbers",
    "strings",
    "paths",
    "dates",
    "tables",
    "graphs",
    "queues",
    "colors",
    "shapes",
    "events",
]


def module_text(n: int) -> str:
    topic = TOPICS[n % len(TOPICS)]
    # numbers of its own, so that two modules share well under the near-duplicate threshold's
    # share of their 5-grams (without them, about 78%: one unlucky hash would merge two)
    weights = [(n * 7919 + i * 104729) % 100003 for i in range(24)]
    return _TEMPLATE.format(n=n, topic=topic, fn=f"{topic}{n}", cls=topic.title() + str(n), weights=weights)


def make_tree(root: Path, files: int = 12, license_text: str | None = MIT, first: int = 0) -> Path:
    """`files` distinct Python modules in a package directory (plus a LICENSE)."""
    pkg = root / "pkg"
    pkg.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + files):
        (pkg / f"mod{i:02d}.py").write_text(module_text(i), encoding="utf-8")
    if license_text:
        (root / "LICENSE").write_text(license_text, encoding="utf-8")
    return root


def make_tokenizer(out: Path, vocab_size: int = 420) -> Tokenizer:
    texts = [module_text(i) for i in range(24)] + [
        textwrap.dedent("""
        def main(argv):
            for index, name in enumerate(argv):
                print(f"{index}: {name}")
            return 0
        """)
    ]
    return train_bpe_tokenizer(texts, out, vocab_size=vocab_size)


def micro_config(vocab_size: int, **changes) -> ModelConfig:
    base = dict(
        model_type="qwen2",
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=1e4,
        qkv_bias=True,
        tie_word_embeddings=True,
    )
    base.update(changes)
    return ModelConfig(**base)


def moe_config(vocab_size: int, **changes) -> ModelConfig:
    return micro_config(
        vocab_size,
        model_type="mixtral",
        qkv_bias=False,
        num_experts=4,
        num_experts_per_tok=2,
        router="softmax",
        **changes,
    )
