"""One config dataclass for every decoder Demi runs, read from a Hugging Face `config.json`.

The families differ in a handful of switches (qkv bias, QK norm, MoE routing, partial
rotary), so one flat dataclass describes them all; `from_hf` is the only place that knows
each family's spelling of those switches.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from demi.model.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "minimax_m2")

_DEFAULT_THETA = {
    "llama": 10000.0,
    "mistral": 10000.0,
    "qwen2": 10000.0,
    "qwen3": 10000.0,
    "mixtral": 1e6,
    "minimax_m2": 5e6,
}
_DEFAULT_EPS = {"llama": 1e-6, "mistral": 1e-6, "qwen2": 1e-6, "qwen3": 1e-6, "mixtral": 1e-5, "minimax_m2": 1e-6}
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
}


@dataclass
class ModelConfig:
    """Shape and switches of a decoder-only transformer."""

    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": linear|dynamic|yarn|llama3, ...}
    partial_rotary_factor: float = 1.0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"  # none | head (Qwen3) | whole (MiniMax-M2: over the whole projection)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"
    # Mixture of experts: num_experts == 0 means a dense MLP.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    router: str = "softmax"  # softmax (Mixtral) | sigmoid (MiniMax-M2)
    routing_bias: bool = False  # e_score_correction_bias, used only to pick experts
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int | None = None
    torch_dtype: str = "float32"
    quantization_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.head_dim:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def context_limit(self) -> int:
        """Longest sequence the model is meant for; dynamic NTK scaling stretches it by its factor."""
        s = self.rope_scaling or {}
        if s.get("rope_type") == "dynamic":
            return int(self.max_position_embeddings * float(s.get("factor", 1.0)))
        return self.max_position_embeddings

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def replace(self, **changes: Any) -> ModelConfig:
        return replace(self, **changes)

    # --- Hugging Face config.json -------------------------------------------------------

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> ModelConfig:
        """Read a parsed `config.json`; unknown families are a `ConfigError` listing the known ones."""
        mt = raw.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unsupported model_type {mt!r}; Demi supports: " + ", ".join(SUPPORTED_MODEL_TYPES))
        try:
            return cls._from_hf(mt, raw)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ConfigError(f"config.json for {mt} is missing or has a bad value: {exc}") from exc

    @classmethod
    def _from_hf(cls, mt: str, raw: dict[str, Any]) -> ModelConfig:
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        head_dim = int(raw.get("head_dim") or hidden // heads)
        rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        theta = float(rope.get("rope_theta", raw.get("rope_theta") or _DEFAULT_THETA[mt]))
        partial = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor"))
        if partial is None and raw.get("rotary_dim"):
            partial = int(raw["rotary_dim"]) / head_dim
        scaling = None
        if rope_type not in ("default", None):
            scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
            scaling["rope_type"] = rope_type
        eos = raw.get("eos_token_id")
        attention_bias = bool(raw.get("attention_bias", False)) and mt not in ("mistral", "mixtral")
        if mt == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = attention_bias
        qk_norm = "none"
        if mt == "qwen3":
            qk_norm = "head"
        elif mt == "minimax_m2" and raw.get("use_qk_norm", True):
            qk_norm = "whole"
        sliding = raw.get("sliding_window")
        if mt in ("qwen2", "qwen3") and not raw.get("use_sliding_window", False):
            sliding = None
        moe = mt in ("mixtral", "minimax_m2")
        return cls(
            model_type=mt,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(raw.get("rms_norm_eps", _DEFAULT_EPS[mt])),
            rope_theta=theta,
            rope_scaling=scaling,
            partial_rotary_factor=float(partial if partial is not None else 1.0),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=qk_norm,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            sliding_window=int(sliding) if sliding else None,
            hidden_act=raw.get("hidden_act", "silu"),
            num_experts=int(raw.get("num_local_experts", 0)) if moe else 0,
            num_experts_per_tok=int(raw.get("num_experts_per_tok", 2)) if moe else 0,
            router="sigmoid" if mt == "minimax_m2" else "softmax",
            routing_bias=mt == "minimax_m2" and bool(raw.get("use_routing_bias", True)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            pad_token_id=raw.get("pad_token_id"),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            quantization_config=raw.get("quantization_config"),
        )

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` that transformers loads as the same model (or a ConfigError if none can)."""
        mt = self.model_type
        fixed = {
            "qwen2": (self.qkv_bias and not self.o_bias, "qwen2 always has q/k/v bias and no o bias"),
            "qwen3": (self.qk_norm == "head", "qwen3 always has per-head QK norm"),
            "minimax_m2": (
                self.qk_norm == "whole" and self.router == "sigmoid" and self.routing_bias,
                "minimax_m2 always has whole-projection QK norm and a sigmoid router with a correction bias",
            ),
            "llama": (self.qkv_bias == self.o_bias, "llama's attention_bias covers q, k, v and o together"),
            "mistral": (not (self.qkv_bias or self.o_bias), "mistral has no attention bias"),
            "mixtral": (
                not (self.qkv_bias or self.o_bias) and self.router == "softmax",
                "mixtral has no attention bias and a softmax router",
            ),
        }
        ok, why = fixed.get(mt, (True, ""))
        if not ok or (mt != "qwen3" and self.qk_norm == "head") or (mt != "minimax_m2" and self.qk_norm == "whole"):
            raise ConfigError(
                f"this {mt} config cannot be written as a transformers config.json: "
                f"{why or 'QK norm is only in qwen3 and minimax_m2'}"
            )
        out: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[mt]],
            "model_type": mt,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": self.hidden_act,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (self.eos_token_id[0] if len(self.eos_token_id) == 1 else (self.eos_token_id or None)),
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
        }
        if self.rope_scaling:
            out["rope_scaling"] = dict(self.rope_scaling)
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
            if mt == "minimax_m2":
                out["rotary_dim"] = self.rotary_dim
        if mt in ("llama", "qwen3"):
            out["attention_bias"] = self.qkv_bias
        if mt == "llama":
            out["mlp_bias"] = self.mlp_bias
        if mt in ("mistral", "mixtral"):
            out["sliding_window"] = self.sliding_window
        elif mt in ("qwen2", "qwen3") and self.sliding_window:
            out.update(use_sliding_window=True, sliding_window=self.sliding_window, max_window_layers=0)
        if self.is_moe:
            out["num_local_experts"] = self.num_experts
            out["num_experts_per_tok"] = self.num_experts_per_tok
        if mt == "minimax_m2":
            out.update(use_qk_norm=self.qk_norm == "whole", use_routing_bias=self.routing_bias, scoring_func="sigmoid")
        if self.quantization_config:
            out["quantization_config"] = self.quantization_config
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def load_config(model_dir: str | Path) -> ModelConfig:
    """Read `<model_dir>/config.json`, with one-line errors for every way it can be wrong."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{path}: no config.json; a model directory needs config.json, tokenizer.json and *.safetensors"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return ModelConfig.from_hf(raw)
