"""Train a byte-level BPE tokenizer (GPT-2 / Qwen style) with Demi's special tokens.

Used by the tests, by the demo model and by the training pipeline. The output directory holds a
`tokenizer.json` and a `tokenizer_config.json` that both `demi.model.tokenizer.Tokenizer` and
transformers' `AutoTokenizer` load, so a model trained here is usable by either.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from demi.model.tokenizer import Tokenizer

# Ids 0..8, in this order: the FIM and file tokens follow Qwen2.5-Coder's names so the same prompt
# templates work for demi-tiny; ChatML's pair comes last.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_start|>",
    "<|im_end|>",
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_bpe_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = 4096,
) -> Tokenizer:
    """Train on `texts`, save `tokenizer.json` + `tokenizer_config.json` in `out_dir`, load it back.

    `vocab_size` counts the special tokens and the 256 byte symbols, which are always all present
    (so any text encodes, with no unknown token). Training is deterministic for the same input.
    """
    min_size = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (special tokens + 256 bytes)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = BackendTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Adds no tokens; it only keeps offsets in terms of the original text.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    for i, token in enumerate(SPECIAL_TOKENS):  # the trainer numbers them first; make sure
        if tok.token_to_id(token) != i:
            raise RuntimeError(f"special token {token} got id {tok.token_to_id(token)}, expected {i}")
    tok.save(str(out / "tokenizer.json"))

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": SPECIAL_TOKENS[0],
        "pad_token": SPECIAL_TOKENS[0],
        "unk_token": None,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        # So transformers counts the FIM/ChatML tokens among `all_special_ids` too (v4 and v5 read this key).
        "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "added_tokens_decoder": {
            str(i): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, token in enumerate(SPECIAL_TOKENS)
        },
        "chat_template": CHATML_TEMPLATE,
        # The FIM prompt a model trained by Demi's pipeline takes (assistant/fim.py reads these): the
        # Qwen-style format, suffix first (the pipeline trains both orders, SPM the more often).
        "fim_family": "demi-tiny",
        "fim_layout": "spm",
    }
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    (out / "tokenizer_config.json").write_text(text, encoding="utf-8")
    return Tokenizer.from_dir(out)
