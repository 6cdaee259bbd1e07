"""A tiny model trained for a few seconds on Python's standard library, so quality checks
(quantization perplexity, FIM placement) run on a model that has learned something."""

from __future__ import annotations

from pathlib import Path

import torch

from demi.model.bpe_train import train_bpe_tokenizer
from demi.model.config import ModelConfig
from demi.model.loading import save_model
from demi.model.scaffold import random_model, stdlib_texts


def train_tiny(out: Path, steps: int = 120, seed: int = 0) -> Path:
    """Train and save a 2-layer qwen2-style model (about 0.4M parameters); writes heldout.txt."""
    texts = list(stdlib_texts(300_000))
    tok = train_bpe_tokenizer(texts, out, vocab_size=1024)
    ids = torch.tensor([i for t in texts for i in tok.encode(t) + tok.eos_token_ids[:1]])
    held, ids = ids[-12_000:], ids[:-12_000]
    cfg = ModelConfig(
        model_type="qwen2",
        vocab_size=tok.vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        qkv_bias=True,
        tie_word_embeddings=True,
        rope_theta=1e4,
        eos_token_id=tok.eos_token_ids,
    )
    torch.manual_seed(seed)
    model = random_model(cfg, seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    span, batch = 128, 16
    for _ in range(steps):
        ix = torch.randint(0, len(ids) - span - 1, (batch,), generator=gen)
        x = torch.stack([ids[i : i + span] for i in ix])
        y = torch.stack([ids[i + 1 : i + span + 1] for i in ix])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model.eval(), out)
    (out / "heldout.txt").write_text(tok.decode(held.tolist()), encoding="utf-8")
    return out
