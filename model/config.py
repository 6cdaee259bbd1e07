"""One config dataclass for every decoder Demi runs, read from a Hugging Face `config.json`.

The families differ in a handful of switches (qkv bias, QK norm, MoE routing, partial
rotary, the norm and MLP kind, lightning layers), so one flat dataclass describes them all;
`from_hf` is the only place that knows each family's spelling of those switches.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from demi.model.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "minimax_m2", "starcoder2", "minimax")

_DEFAULT_THETA = {
    "llama": 10000.0,
    "mistral": 10000.0,
    "qwen2": 10000.0,
    "qwen3": 10000.0,
    "mixtral": 1e6,
    "minimax_m2": 5e6,
    "starcoder2": 10000.0,
    "minimax": 1e6,
}
_DEFAULT_EPS = {
    "llama": 1e-6,
    "mistral": 1e-6,
    "qwen2": 1e-6,
    "qwen3": 1e-6,
    "mixtral": 1e-5,
    "minimax_m2": 1e-6,
    "starcoder2": 1e-5,
    "minimax": 1e-5,
}
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "minimax": "MiniMaxForCausalLM",
}
# Per-layer kinds of a hybrid stack (MiniMax-Text-01's `layer_types`).
SOFTMAX, LIGHTNING = "full_attention", "linear_attention"
# MiniMax's residual weights, in transformers' spelling: each residual is alpha * the normed input
# plus beta * the branch (attention of either kind, then the experts).
RESIDUAL_SCALES = (
    "full_attn_alpha_factor",
    "full_attn_beta_factor",
    "linear_attn_alpha_factor",
    "linear_attn_beta_factor",
    "mlp_alpha_factor",
    "mlp_beta_factor",
)
# Demi's own position option (model/xpos.py): RoPE alone, or xPos's decaying q/k scales on top of it.
# No transformers family has xPos: its keys in config.json are read by Demi only.
POSITION_EMBEDDINGS = ("rope", "xpos")
XPOS_KEYS = ("position_embedding", "xpos_gamma", "xpos_scale_base", "xpos_adaptive")
XPOS_MAX_EXPONENT = 60.0  # largest |ln| of a q or k scale a config may need (e^60 fits fp32 and bf16)
XPOS_ADAPTIVE_SPAN = 2.0  # adaptive xPos: scale base B / span in the first layer to B * span in the last
# StarCoder2's GELU: transformers' activation names for the two forms torch has.
GELU_APPROXIMATIONS = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}


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
    rms_norm_eps: float = 1e-6  # the eps of every norm (StarCoder2's LayerNorm too: its norm_epsilon)
    norm: str = "rms"  # rms | layer (StarCoder2: LayerNorm with a bias)
    mlp: str = "swiglu"  # swiglu (gate, up, down) | gelu (StarCoder2: c_fc, GELU, c_proj)
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": linear|dynamic|yarn|llama3, ...}
    partial_rotary_factor: float = 1.0
    position_embedding: str = "rope"  # rope | xpos (Demi's own, model/xpos.py: rope plus decaying q/k scales)
    xpos_gamma: float = 0.4  # zeta_i = (i / (d/2) + gamma) / (1 + gamma), the paper's 0.4
    xpos_scale_base: float = 512.0  # B in zeta^((n-m)/B), the paper's 512
    xpos_adaptive: bool = False  # scale base growing with depth, B/2 to 2B (xpos_scale_base_at)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"  # none | head (Qwen3) | whole (MiniMax-M2: over the whole projection)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    hidden_act: str = "silu"  # read for mlp="gelu" (tanh or exact GELU); SwiGLU is always SiLU
    # Mixture of experts: num_experts == 0 means a dense MLP.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    router: str = "softmax"  # softmax (Mixtral) | sigmoid (MiniMax-M2)
    routing_bias: bool = False  # e_score_correction_bias, used only to pick experts
    # Hybrid stacks (MiniMax-Text-01): per layer SOFTMAX or LIGHTNING (lightning.py); None: all softmax.
    layer_types: list[str] | None = None
    lightning_block: int = 256  # tokens per block when a lightning layer absorbs a prompt (block_size)
    # MiniMax's blocks (minimax.py): residual = the normed input, weighted by RESIDUAL_SCALES (1.0 if absent)
    postnorm: bool = False
    residual_scales: dict[str, float] | None = None
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
        if self.norm not in ("rms", "layer") or self.mlp not in ("swiglu", "gelu"):
            raise ConfigError(f"unknown norm {self.norm!r} or mlp {self.mlp!r}; expected rms|layer and swiglu|gelu")
        if self.mlp == "gelu" and self.hidden_act not in GELU_APPROXIMATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not a GELU; the GELU MLP takes " + ", ".join(GELU_APPROXIMATIONS)
            )
        self._check_position_embedding()
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {SOFTMAX, LIGHTNING}:
                raise ConfigError(
                    f"layer_types needs one of {SOFTMAX!r} or {LIGHTNING!r} per layer "
                    f"({self.num_hidden_layers}), got {self.layer_types}"
                )
            if LIGHTNING in self.layer_types and self.hidden_act != "silu":
                raise ConfigError(f"lightning layers take q, k, v through SiLU; hidden_act {self.hidden_act!r}")
            if self.lightning_block < 1:
                raise ConfigError(f"block_size must be >= 1, got {self.lightning_block}")

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
    def native_rotary(self) -> bool:
        """Whether queries and keys take one and the same rotation (RoPE), as native/decode_ops.c,
        batched decode's shared q/k pass and the ONNX graph do them. False under xPos, which scales
        q and k apart (model/xpos.py): its layers take no native decode library and stay on torch's."""
        return self.position_embedding == "rope"

    def xpos_scale_base_at(self, layer: int) -> float:
        """xPos's scale base in layer `layer`: `xpos_scale_base`, or with `xpos_adaptive` growing
        geometrically with depth from B / XPOS_ADAPTIVE_SPAN to B * XPOS_ADAPTIVE_SPAN (model/xpos.py)."""
        last = self.num_hidden_layers - 1
        if not self.xpos_adaptive or last < 1:
            return float(self.xpos_scale_base)
        return float(self.xpos_scale_base) * XPOS_ADAPTIVE_SPAN ** (2 * layer / last - 1)

    def _check_position_embedding(self) -> None:
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ConfigError(
                f"unknown position_embedding {self.position_embedding!r}; expected " + " or ".join(POSITION_EMBEDDINGS)
            )
        if self.position_embedding != "xpos":
            return
        if not (self.xpos_gamma > 0 and self.xpos_scale_base > 0 and self.rotary_dim >= 2):
            raise ConfigError(
                f"xPos needs xpos_gamma > 0, xpos_scale_base > 0 and rotary dims; got gamma {self.xpos_gamma}, "
                f"scale base {self.xpos_scale_base}, {self.rotary_dim} rotary dims"
            )
        # the largest exponent: half the context (positions count from its centre) at the smallest
        # zeta, gamma / (1 + gamma), and the smallest scale base (the first layer's when adaptive)
        per_token = -math.log(self.xpos_gamma / (1 + self.xpos_gamma)) / self.xpos_scale_base_at(0)
        if (self.context_limit // 2) * per_token > XPOS_MAX_EXPONENT:
            fits = 2 * int(XPOS_MAX_EXPONENT / per_token)
            needed = math.ceil(self.xpos_scale_base * self.context_limit / fits)
            raise ConfigError(
                f"xPos with scale base {self.xpos_scale_base:g}{' (adaptive)' if self.xpos_adaptive else ''} and "
                f"gamma {self.xpos_gamma:g} stays in float range for {fits:,} positions, not {self.context_limit:,}; "
                f"raise xpos_scale_base to {needed} or shorten the context"
            )

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_lightning(self, layer: int) -> bool:
        """Whether layer `layer` is a lightning (linear attention) layer rather than a softmax one."""
        return self.layer_types is not None and self.layer_types[layer] == LIGHTNING

    @property
    def lightning_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_lightning(i)]

    def residual_scale(self, name: str) -> float:
        """One of RESIDUAL_SCALES (1.0 when the config has none)."""
        return float((self.residual_scales or {}).get(name, 1.0))

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
        if mt == "minimax":  # transformers' MiniMax rotates whole heads whatever rotary_dim says
            partial = 1.0
        scaling = None
        if rope_type not in ("default", None):
            scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor", "type")}
            scaling["rope_type"] = rope_type
        eos = raw.get("eos_token_id")
        attention_bias = bool(raw.get("attention_bias", False)) and mt not in ("mistral", "mixtral")
        mlp_bias = bool(raw.get("mlp_bias", False))
        if mt == "qwen2":
            qkv_bias, o_bias = True, False
        elif mt == "starcoder2":  # use_bias: every projection, q/k/v/o and both MLP layers
            qkv_bias = o_bias = mlp_bias = bool(raw.get("use_bias", True))
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
        moe = mt in ("mixtral", "minimax_m2", "minimax")
        layer_types, scales = None, None
        if mt == "minimax":  # without layer_types, transformers' default: softmax on even layers
            default = [SOFTMAX if i % 2 == 0 else LIGHTNING for i in range(int(raw["num_hidden_layers"]))]
            layer_types = list(raw.get("layer_types") or default)
            scales = {k: float(raw.get(k, 1.0)) for k in RESIDUAL_SCALES}
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
            rms_norm_eps=float(raw.get("norm_epsilon" if mt == "starcoder2" else "rms_norm_eps", _DEFAULT_EPS[mt])),
            norm="layer" if mt == "starcoder2" else "rms",
            mlp="gelu" if mt == "starcoder2" else "swiglu",
            rope_theta=theta,
            rope_scaling=scaling,
            partial_rotary_factor=float(partial if partial is not None else 1.0),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            qk_norm=qk_norm,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", mt == "starcoder2")),  # StarCoder2 ties by default
            sliding_window=int(sliding) if sliding else None,
            hidden_act=raw.get("hidden_act", "gelu_pytorch_tanh" if mt == "starcoder2" else "silu"),
            num_experts=int(raw.get("num_local_experts", 8)) if moe else 0,
            num_experts_per_tok=int(raw.get("num_experts_per_tok", 2)) if moe else 0,
            router="sigmoid" if mt == "minimax_m2" else "softmax",
            routing_bias=mt == "minimax_m2" and bool(raw.get("use_routing_bias", True)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
            pad_token_id=raw.get("pad_token_id"),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            quantization_config=raw.get("quantization_config"),
            **_own_position_fields(raw),
            layer_types=layer_types,
            lightning_block=int(raw.get("block_size", 256)) if mt == "minimax" else 256,
            postnorm=mt == "minimax",
            residual_scales=scales,
        )

    def to_hf(self, transformers_only: bool = False) -> dict[str, Any]:
        """A `config.json` that transformers loads as the same model (or a ConfigError if none can).

        Demi's own switches (xPos: XPOS_KEYS) go beside the family's keys, so Demi's checkpoints keep
        them; transformers ignores keys it does not know and would run such a model as plain RoPE.
        `transformers_only` asks for a config transformers itself runs as this model: one with a
        switch of Demi's own is then refused like any switch the family lacks."""
        mt = self.model_type
        if transformers_only and not self.native_rotary:
            raise ConfigError(
                f"this {mt} config cannot be written as a transformers config.json: xPos "
                f'(position_embedding="{self.position_embedding}") is Demi\'s own; no transformers family has it'
            )
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
            "starcoder2": (
                self.qkv_bias == self.o_bias == self.mlp_bias and self.norm == "layer" and self.mlp == "gelu",
                "starcoder2's use_bias covers every projection; it always has LayerNorm and the GELU MLP",
            ),
            "minimax": (
                self.postnorm
                and self.layer_types is not None
                and self.is_moe
                and self.router == "softmax"
                and not (self.qkv_bias or self.o_bias or self.routing_bias)
                and self.partial_rotary_factor == 1.0,
                "minimax always has layer_types, post-norm residuals, softmax-routed experts, no bias and full rotary",
            ),
        }
        ok, why = fixed.get(mt, (True, ""))
        if mt != "starcoder2" and (self.norm, self.mlp) != ("rms", "swiglu"):
            ok, why = False, "LayerNorm and the GELU MLP are starcoder2's only"
        if mt != "minimax" and (self.postnorm or self.lightning_layers):
            ok, why = False, "post-norm residuals and lightning layers are minimax's only"
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
        if mt == "starcoder2":
            out["norm_epsilon"] = out.pop("rms_norm_eps")
            out.update(use_bias=self.qkv_bias, sliding_window=self.sliding_window)
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
        if mt == "minimax":
            out.update(layer_types=list(self.layer_types or []), block_size=self.lightning_block)
            out.update({k: self.residual_scale(k) for k in RESIDUAL_SCALES}, sliding_window=self.sliding_window)
        if mt == "minimax_m2":
            out.update(use_qk_norm=self.qk_norm == "whole", use_routing_bias=self.routing_bias, scoring_func="sigmoid")
        if self.quantization_config:
            out["quantization_config"] = self.quantization_config
        if not self.native_rotary:
            out.update({k: getattr(self, k) for k in XPOS_KEYS})
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _own_position_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """Demi's own position keys (xPos) from a config.json Demi wrote, checked by `ModelConfig`."""
    out: dict[str, Any] = {}
    if "position_embedding" in raw:
        out["position_embedding"] = str(raw["position_embedding"])
    for key in ("xpos_gamma", "xpos_scale_base"):
        if key in raw:
            out[key] = float(raw[key])
    if "xpos_adaptive" in raw:
        if not isinstance(raw["xpos_adaptive"], bool):
            raise ConfigError(f"xpos_adaptive must be true or false, got {raw['xpos_adaptive']!r}")
        out["xpos_adaptive"] = raw["xpos_adaptive"]
    return out


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
