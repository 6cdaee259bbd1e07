"""The tokenizer Demi uses for every model: `tokenizer.json` through the `tokenizers` library.

transformers is deliberately not imported (it costs seconds at CLI start-up); instead this module
reproduces what `AutoTokenizer` does with the same files, so ids, text and chat prompts match it:
special tokens and flags from `tokenizer_config.json`, the chat template rendered in the same
sandboxed jinja2 environment, and end-of-sequence ids gathered from every config that names them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

from demi.model.errors import TokenizerError

_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Demi's keys in tokenizer_config.json for the model's FIM prompt: its template family (e.g. "demi-tiny")
# and its order, "psm" (prefix first) or "spm" (suffix first). transformers keeps unknown keys and ignores them.
FIM_METADATA_KEYS = ("fim_family", "fim_layout")


def _read_json(path: Path, required: bool = False) -> dict[str, Any]:
    """Optional side files are best effort; the tokenizer's own files must parse."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if required:
            raise TokenizerError(f"cannot read {path}: {exc}") from None
        return {}
    return data if isinstance(data, dict) else {}


def _token_str(value: Any) -> str | None:
    """Special tokens appear as plain strings or as serialized AddedToken dicts."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    """`eos_token_id` is an int, a list of ints, or absent."""
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def _like_hf_llama(backend: BackendTokenizer, cfg: dict[str, Any], raw: str) -> None:
    """transformers 5 rebuilds (Code)Llama tokenizers around tokenizer.json's vocabulary with its own
    Metaspace (no split, no normalizer): old Llama-2/Mistral files prepend "▁" in a normalizer, which
    gives other ids after special tokens or a leading space. Do the same so the ids match."""
    cls = str(cfg.get("tokenizer_class") or "").removesuffix("Fast")
    if (
        cls not in ("LlamaTokenizer", "CodeLlamaTokenizer")
        or type(backend.model).__name__ != "BPE"
        or '"ByteLevel"' in raw
    ):  # byte-level files declared as Llama load as-is (Llama 3)
        return
    prefix = cfg.get("add_prefix_space") is not False
    scheme = "never" if not prefix else "always" if cls == "LlamaTokenizer" and cfg.get("legacy") else "first"
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix or cls == "CodeLlamaTokenizer":
        steps.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(steps)


class Tokenizer:
    """A fast tokenizer plus the special tokens and chat template a model directory declares."""

    def __init__(
        self,
        backend: BackendTokenizer,
        special_tokens_map: dict[str, str | None] | None = None,
        chat_template: str | None = None,
        extra_eos_ids: Iterable[int] = (),
    ) -> None:
        self.backend = backend
        self.special_tokens_map = {k: v for k, v in (special_tokens_map or {}).items() if v is not None}
        self._chat_template = chat_template
        self._compiled: Any = None
        eos = [self.token_to_id(self.special_tokens_map.get("eos_token", ""))]
        self.eos_token_ids: list[int] = [i for i in dict.fromkeys([*eos, *extra_eos_ids]) if i is not None]
        # The model's own word on its FIM prompt (tokenizer_config.json's `fim_family`, `fim_layout`):
        # read by assistant/fim.py's `detect_fim`, which otherwise goes by the FIM tokens alone.
        self.fim_metadata: dict[str, str] = {}

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load a Hugging Face style model directory the way `AutoTokenizer` would."""
        root = Path(path)
        if not root.is_dir():
            raise TokenizerError(f"tokenizer directory not found: {root}")
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise TokenizerError(f"no tokenizer.json in {root} (Demi needs the fast tokenizer file)")
        try:
            raw = tok_file.read_text(encoding="utf-8")
            backend = BackendTokenizer.from_str(raw)
        except Exception as exc:  # the Rust side raises bare Exceptions on malformed files
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise TokenizerError(f"cannot load {tok_file}: {reason}") from None
        cfg = _read_json(root / "tokenizer_config.json", required=True)
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = bool(cfg.get("split_special_tokens", False))

        # Tokens the config declares (and named specials) that tokenizer.json does not list as added
        # tokens are added, as transformers does; one already in the vocabulary keeps its id.
        present = {t.content for t in backend.get_added_tokens_decoder().values()}
        declared = (cfg.get("added_tokens_decoder") or {}).items()
        for _, t in sorted(declared, key=lambda it: int(it[0]) if str(it[0]).isdigit() else -1):
            if isinstance(t, dict) and isinstance(t.get("content"), str) and t["content"] not in present:
                keys = ("single_word", "lstrip", "rstrip", "normalized", "special")
                flags = {k: bool(t[k]) for k in keys if k in t}
                backend.add_tokens([AddedToken(t["content"], **flags)])
                present.add(t["content"])
        specials = {k: _token_str(cfg.get(k)) for k in _NAMED_SPECIALS}
        extra_specials = [
            _token_str(t)
            for key in ("additional_special_tokens", "extra_special_tokens")
            if isinstance(cfg.get(key), list)
            for t in cfg[key]
        ]
        wanted = dict.fromkeys([*specials.values(), *extra_specials])
        missing = [s for s in wanted if s is not None and s not in present]
        if missing:
            backend.add_special_tokens(missing)

        _like_hf_llama(backend, cfg, raw)
        # BOS/EOS come from tokenizer.json's post-processor alone: transformers 5 ignores the config's
        # add_bos_token / add_eos_token when tokenizer.json exists. See the `add_bos_token` property.

        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{name, template}, ...]: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        jinja_file = root / "chat_template.jinja"
        if jinja_file.is_file():  # transformers lets the separate file win
            template = jinja_file.read_text(encoding="utf-8", errors="replace")

        extra: list[int] = []
        for name in ("generation_config.json", "config.json"):
            data = _read_json(root / name)
            text_cfg = data.get("text_config")
            nested = text_cfg.get("eos_token_id") if isinstance(text_cfg, dict) else None  # multimodal
            extra += _ids(data.get("eos_token_id")) + _ids(nested)
        tok = cls(backend, specials, template if isinstance(template, str) else None, extra)
        fim = {k: cfg.get(k) for k in FIM_METADATA_KEYS}
        tok.fim_metadata = {k: v.strip().lower() for k, v in fim.items() if isinstance(v, str) and v.strip()}
        return tok

    # -- vocabulary -------------------------------------------------------------------------------

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added tokens included (transformers' `len(tok)`)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens_map.get(name)
        return None if token is None else self.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        """The primary end-of-sequence id; `eos_token_ids` holds every id that should stop generation."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._special_id("unk_token")

    @property
    def add_bos_token(self) -> bool:
        """Whether `encode(..., add_special_tokens=True)` prepends BOS (what prompt builders need)."""
        bos = self.bos_token_id
        return bos is not None and self.encode("")[:1] == [bos]

    @property
    def special_tokens(self) -> dict[str, int]:
        """All added tokens flagged special (the ones `skip_special_tokens` drops)."""
        return {t.content: i for i, t in sorted(self.backend.get_added_tokens_decoder().items()) if t.special}

    # -- text <-> ids -----------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Special-token strings in `text` become their ids (transformers' default)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """transformers' decode; its `clean_up_tokenization_spaces` is a no-op for BPE models."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _byte_fallback_ids(self) -> frozenset[int]:
        """Ids of the <0xNN> tokens when the model falls back to bytes (Llama style), else empty."""
        if not getattr(self.backend.model, "byte_fallback", False):
            return frozenset()
        ids = (self.token_to_id(f"<0x{b:02X}>") for b in range(256))
        return frozenset(i for i in ids if i is not None)

    def stream(self, skip_special_tokens: bool = False, prefix_ids: Sequence[int] = ()) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens, prefix_ids)

    # -- chat -------------------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        return self._chat_template

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render the chat template as transformers' `apply_chat_template(..., tokenize=False)` does."""
        if self._chat_template is None:
            raise TokenizerError("this model's tokenizer has no chat template")
        import jinja2  # deferred: only chat needs it

        if self._compiled is None:
            self._compiled = _compile_template(self._chat_template)
        # Keys set to None are dropped (templates handle a missing key better than a literal None).
        msgs = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        context = {**self.special_tokens_map, "tools": None, "documents": None, **kwargs}
        try:
            return self._compiled.render(messages=msgs, add_generation_prompt=add_generation_prompt, **context)
        except jinja2.TemplateError as exc:
            raise TokenizerError(f"chat template failed: {exc}") from None


def _compile_template(source: str) -> Any:
    """Same sandbox and helpers as transformers, so Hub templates render identically."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        """`{% generation %}` marks assistant text for training masks; rendering keeps the body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TokenizerError(f"chat template does not parse (line {exc.lineno}): {exc.message}") from None


class StreamDecoder:
    """Incremental detokenization: text pieces as ids arrive, never a split UTF-8 character.

    Decoding token by token is wrong (byte-level tokens split characters; Metaspace decoders drop
    the leading space of the first token) and re-decoding everything is O(n) per token. Instead a
    short window of recent ids is decoded twice: up to `read` (text already emitted) and to the
    end; the difference is new text, held back while it ends in U+FFFD (bytes still incomplete).
    The window's first ids were emitted already, so any first-token space stripping cancels out.
    With byte fallback (Llama) a run of <0xNN> tokens is held until a normal token ends it, so the
    pieces add up to exactly `decode(ids)` even for invalid byte sequences from a random model.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False, prefix_ids: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._byte_ids = tokenizer._byte_fallback_ids()
        self._special_ids = set(tokenizer.special_tokens.values()) if skip_special_tokens else set()
        # Optional context (the prompt's last ids) so the first generated token keeps its leading space.
        self._ids: list[int] = list(prefix_ids)[-4:]  # the window starts at the prefix offset
        self._read = len(self._ids)  # ids[:read] were already turned into text
        self._read_text: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, self._skip)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while bytes are pending)."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is left at the end (incomplete bytes come out as U+FFFD, as decode gives them)."""
        return self._advance(final=True)

    def _in_byte_run(self) -> bool:
        """ByteFallback decodes a run of <0xNN> tokens as a whole (an invalid run becomes all U+FFFD,
        even its ASCII bytes), so a run is only final once a non-byte token ends it."""
        for i in reversed(self._ids):
            if i not in self._special_ids:  # skipped specials do not end a run
                return i in self._byte_ids
        return False

    def _advance(self, final: bool) -> str:
        if self._read_text is None:
            self._read_text = self._decode(self._ids[: self._read])
        if not final and self._in_byte_run():
            return ""
        text = self._decode(self._ids)
        if len(text) <= len(self._read_text) or (text.endswith("\ufffd") and not final):
            return ""
        piece = text[len(self._read_text) :]
        del self._ids[: self._read]  # the new window starts where the emitted text ended
        self._read, self._read_text = len(self._ids), None
        return piece
