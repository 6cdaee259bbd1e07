"""Random-weight models in Hugging Face layout: a real shape, a real tokenizer, no training.

Used for speed measurements in a real model's shape (`demi bench` on a preset), for tests,
and for the demo until the built-in model is trained. The tokenizer is a byte-level BPE
trained on Python's own standard library, so it is a plausible code tokenizer.

    python -m demi.model.scaffold OUT_DIR [--preset NAME] [--layers N --hidden H ...]
"""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch

from demi.model.bpe_train import train_bpe_tokenizer
from demi.model.config import ModelConfig
from demi.model.decoder import Transformer
from demi.model.loading import save_model
from demi.model.presets import get_preset


def stdlib_texts(max_bytes: int = 3_000_000) -> Iterator[str]:
    """Python files of this interpreter's standard library (PSF-licensed), up to `max_bytes`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        total += len(text)
        if total > max_bytes:
            return
        yield text


RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight", "w2.weight")  # projections back into the residual stream


def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.02, residual_std: float | None = None) -> Transformer:
    """A decoder with normal(0, std) weights (`residual_std` for the projections back into the
    residual stream, when given), unit norms and zero biases, deterministic for a seed."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif residual_std is not None and name.endswith(RESIDUAL_OUTPUTS):
                p.normal_(0.0, residual_std)
            else:
                p.normal_(0.0, std)
    return model.eval()


def build(out_dir: Path, cfg: ModelConfig, vocab_size: int = 4096, seed: int = 0, keep_vocab: bool = False) -> Path:
    """Write tokenizer + config + random weights into `out_dir`.

    The model's vocabulary follows the tokenizer, or with `keep_vocab` stays the config's
    (when larger), so a preset keeps its real embedding shape for speed measurements.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_bpe_tokenizer(stdlib_texts(), out_dir, vocab_size=vocab_size)
    vocab = max(cfg.vocab_size, tok.vocab_size) if keep_vocab else tok.vocab_size
    cfg = cfg.replace(
        vocab_size=vocab, eos_token_id=tok.eos_token_ids, bos_token_id=None, pad_token_id=tok.pad_token_id
    )
    save_model(random_model(cfg, seed), out_dir)
    (out_dir / "README.md").write_text(
        "Random weights in a real tokenizer's vocabulary: output is not meaningful text.\n"
        f"Built by `python -m demi.model.scaffold` (seed {seed}).\n",
        encoding="utf-8",
    )
    return out_dir


def demo_config() -> ModelConfig:
    """A small Qwen2-style model: quick to build and to run on two CPU cores."""
    return ModelConfig(
        model_type="qwen2",
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=1e6,
        qkv_bias=True,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demi.model.scaffold", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--preset", help="use a preset's shape (e.g. qwen2.5-coder-0.5b)")
    ap.add_argument("--vocab-size", type=int, default=4096, help="tokenizer size (ignored with --preset)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if (args.out_dir / "config.json").is_file():
        print(f"{args.out_dir}: already built")
        return 0
    if args.preset:
        build(args.out_dir, get_preset(args.preset), args.vocab_size, args.seed, keep_vocab=True)
    else:
        build(args.out_dir, demo_config(), args.vocab_size, args.seed)
    print(f"built {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
