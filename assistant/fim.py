"""Fill-in-the-middle prompt templates, one per model family, picked from the tokenizer's special tokens.

`detect_fim(tokenizer)` looks at which FIM tokens the vocabulary has and returns a `FimTemplate`
(or None for a model without FIM tokens: callers fall back to plain prefix completion). The tokens
give the *format*; the *order* comes from the model's own metadata, never from a guess:
tokenizer_config.json's `"fim_layout"` (`"psm"`, prefix first, the default for every model, or
`"spm"`, suffix first) and `"fim_family"` (a name in `FAMILIES`, e.g. demi-tiny's `"demi-tiny"`;
without it a model with Qwen's FIM tokens is Qwen2.5-Coder, whatever else its vocabulary holds).
`fim_template_for(family)` is the same template from a family's name alone (token strings, no
tokenizer): what the HTTP client uses to build the prompt for a remote model whose family is known.
`FimTemplate.build(prefix, suffix, path, repo, other_files)` renders the prompt *text*; encode it
with the tokenizer's defaults (`add_special_tokens=True`): BOS, where a family has one, comes from
the tokenizer, not from the template. Generation stops on `stop_token_ids` (the family's
end-of-middle and file tokens plus the tokenizer's end-of-sequence ids); `stop_strings` are the same
markers as text, for engines that only take strings.

Formats (what each family was trained on; `⟨…⟩` are single special tokens):

    qwen2.5-coder, demi-tiny  [⟨|repo_name|⟩repo\\n] [⟨|file_sep|⟩path\\ncontent\\n]... [⟨|file_sep|⟩path\\n]
                              ⟨|fim_prefix|⟩prefix⟨|fim_suffix|⟩suffix⟨|fim_middle|⟩
                              (demi-tiny, trained on both orders, takes the suffix first:
                              ⟨|fim_suffix|⟩suffix⟨|fim_prefix|⟩prefix⟨|fim_middle|⟩)
    starcoder2                [⟨repo_name⟩repo] [⟨file_sep⟩path\\ncontent]...
                              [⟨file_sep⟩]⟨fim_prefix⟩[path\\n]prefix⟨fim_suffix⟩suffix⟨fim_middle⟩
    starcoder                 ⟨fim_prefix⟩prefix⟨fim_suffix⟩suffix⟨fim_middle⟩
    codellama                 ⟨▁<PRE>⟩ prefix⟨▁<SUF>⟩suffix⟨▁<MID>⟩   (text: "<PRE> {pre} <SUF>{suf} <MID>")
    deepseek-coder            ⟨｜fim▁begin｜⟩prefix⟨｜fim▁hole｜⟩suffix⟨｜fim▁end｜⟩
    codestral                 ⟨[SUFFIX]⟩suffix⟨[PREFIX]⟩ prefix   (SPM; the space only with SentencePiece)

CodeLlama spacing, as Meta's reference encodes it: `[BOS, ▁<PRE>] + encode(prefix) + [▁<SUF>] +
encode_infilling(suffix) + [▁<MID>]`. SentencePiece's encode adds a dummy-prefix "▁" before the
prefix (hence the space after `<PRE>`), `encode_infilling` does not (no space before the suffix), and
the spaces before `<SUF>` and `<MID>` are part of those tokens (`▁<SUF>`, `▁<MID>`). Demi's tokenizer
never adds the dummy prefix after a special token, so the template writes that space itself (only
when there is prefix text: `encode("")` is empty). Vocabularies whose tokens lack the "▁" (`<PRE>`,
`<SUF>`, `<MID>`) get the documented text form with literal spaces. Codestral's SentencePiece
tokenizer (v0.1) encodes the prefix with the same dummy prefix ("<s>[SUFFIX]suffix[PREFIX] prefix");
byte-level (Tekken) vocabularies add no space.

Order and the prefix cache. The engine reuses the KV of the longest common token prefix with an
earlier request, so the parts that change least must come first. Repository context (repo name,
other files, the current file's path) always comes first: it is stable while the user types. After
it the order is the family's trained order; we never reorder a format the model was not trained on.
In PSM (every family but Codestral) typing at the cursor only changes the *end* of the prefix, so a
request re-uses everything up to the edit point and re-prefills the last few prefix tokens plus the
suffix (editors cap the suffix, so that is short). In SPM (Codestral) the suffix comes first and the
prefix last, so typing only appends to the end of the prompt: nearly everything is reused.
demi-tiny is trained by our own pipeline on both orders and says so in its tokenizer_config.json
(`"fim_family": "demi-tiny", "fim_layout": "spm"`, written by model/bpe_train.py), so it takes the
suffix-first order too. A family's own default order applies when the metadata names the family but
no layout (demi-tiny: SPM); only the Qwen-style format has an SPM variant besides Codestral's.

Families without file tokens (StarCoder 1, CodeLlama, DeepSeek-Coder, Codestral) get other files as
line-comment blocks ("# path" then the content, as DeepSeek-Coder's repository examples do) at the
start of the prefix text, followed by a comment with the current file's path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any, Protocol

__all__ = ["FAMILIES", "FIM_LAYOUTS", "FimTemplate", "detect_fim", "family_name", "fim_template_for"]

FAMILIES = ("qwen2.5-coder", "demi-tiny", "starcoder", "starcoder2", "codellama", "deepseek-coder", "codestral")
FIM_LAYOUTS = ("psm", "spm")
# Short names accepted where a person writes a family (the `server_fim` setting).
ALIASES = {"qwen": "qwen2.5-coder", "deepseek": "deepseek-coder"}
# A family's own order when its metadata names it without a layout (Codestral is SPM by format).
_DEFAULT_LAYOUT = {"demi-tiny": "spm"}

# Each family's tokens as its vocabulary spells them (end of sequence first): `fim_template_for`
# detects the template on this vocabulary, so a named family gets exactly what detection would.
_FAMILY_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2.5-coder": (
        "<|endoftext|>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<|im_start|>",
        "<|im_end|>",
    ),
    "starcoder": ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"),
    "starcoder2": (
        "<|endoftext|>",
        "<fim_prefix>",
        "<fim_middle>",
        "<fim_suffix>",
        "<fim_pad>",
        "<repo_name>",
        "<file_sep>",
    ),
    # the documented text form ("<PRE> {pre} <SUF>{suf} <MID>"): a server's tokenizer reads the text
    "codellama": ("</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"),
    "deepseek-coder": ("<｜end▁of▁sentence｜>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<|EOT|>"),
    "codestral": ("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"),
}
_FAMILY_TOKENS["demi-tiny"] = _FAMILY_TOKENS["qwen2.5-coder"]

_LINE_COMMENT = {
    **dict.fromkeys(
        (
            "c",
            "h",
            "cc",
            "cpp",
            "cxx",
            "hpp",
            "hh",
            "cs",
            "java",
            "js",
            "jsx",
            "mjs",
            "ts",
            "tsx",
            "go",
            "rs",
            "kt",
            "kts",
            "swift",
            "scala",
            "dart",
            "php",
            "zig",
            "groovy",
            "proto",
        ),
        "//",
    ),
    **dict.fromkeys(("sql", "lua", "hs", "elm", "ada", "vhdl"), "--"),
    **dict.fromkeys(("erl", "hrl", "tex", "m4"), "%"),
    **dict.fromkeys(("clj", "cljs", "lisp", "el", "scm", "rkt"), ";;"),
}


class _Tok(Protocol):
    """What detection needs from a tokenizer (demi.model.tokenizer.Tokenizer has all of it)."""

    eos_token_ids: list[int]

    def token_to_id(self, token: str) -> int | None: ...


def line_comment(path: str | None) -> str:
    """The line-comment marker for a file, by extension ('#' when unknown)."""
    ext = PurePosixPath(path or "").suffix.lower().lstrip(".")
    return _LINE_COMMENT.get(ext, "#")


@dataclass(frozen=True)
class FimTemplate:
    """One family's FIM format; `build` renders the prompt text (see the module docstring)."""

    family: str
    style: str  # qwen | starcoder2 | plain | codellama | codestral
    prefix_token: str
    suffix_token: str
    middle_token: str | None  # Codestral has none: the middle follows the prefix
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    repo_token: str | None = None
    file_sep_token: str | None = None
    lead_space: bool = False  # SentencePiece dummy-prefix space before the prefix text
    suffix_first: bool = False  # SPM for a model trained on it (demi-tiny): typing only appends

    @property
    def order(self) -> str:
        """'psm' (prefix, suffix, middle) or 'spm' (suffix first)."""
        return "spm" if self.style == "codestral" or self.suffix_first else "psm"

    def build(
        self,
        prefix: str,
        suffix: str,
        path: str | None = None,
        repo: str | None = None,
        other_files: Iterable[tuple[str, str]] = (),
    ) -> str:
        """The FIM prompt for `prefix`<cursor>`suffix`; `other_files` are (path, content) pairs of
        context from the same repository, most stable first."""
        others: Sequence[tuple[str, str]] = [(str(p), str(c)) for p, c in other_files]
        if self.style == "qwen" and self.file_sep_token:
            head = f"{self.repo_token}{repo}\n" if repo is not None and self.repo_token else ""
            for p, content in others:
                head += f"{self.file_sep_token}{p}\n{content}" + ("" if content.endswith("\n") else "\n")
            if path is not None:
                head += f"{self.file_sep_token}{path}\n"
            if self.suffix_first:
                return f"{head}{self.suffix_token}{suffix}{self.prefix_token}{prefix}{self.middle_token}"
            return f"{head}{self.prefix_token}{prefix}{self.suffix_token}{suffix}{self.middle_token}"
        if self.style == "starcoder2":
            head = f"{self.repo_token}{repo}" if repo is not None else ""
            for p, content in others:
                head += f"{self.file_sep_token}{p}\n{content}"
            if head or path is not None:
                head += self.file_sep_token or ""
            where = f"{path}\n" if path is not None else ""
            return f"{head}{self.prefix_token}{where}{prefix}{self.suffix_token}{suffix}{self.middle_token}"
        text = _comment_context(others, path) + prefix
        if self.style == "codellama":
            space = " " if text else ""
            return f"{self.prefix_token}{space}{text}{self.suffix_token}{suffix}{self.middle_token}"
        if self.style == "codestral":
            space = " " if text and self.lead_space else ""
            return f"{self.suffix_token}{suffix}{self.prefix_token}{space}{text}"
        return f"{self.prefix_token}{text}{self.suffix_token}{suffix}{self.middle_token}"


def _comment_context(others: Sequence[tuple[str, str]], path: str | None) -> str:
    """Other files as comment-headed blocks, then the current file's path, for families without
    file tokens. Empty when there are no other files (the prefix is then the file itself)."""
    if not others:
        return ""
    mark = line_comment(path or others[0][0])
    out = ""
    for p, content in others:
        out += f"{mark} {p}\n{content}" + ("" if content.endswith("\n") else "\n") + "\n"
    if path is not None:
        out += f"{mark} {path}\n"
    return out


def _has(tok: _Tok, token: str) -> bool:
    return tok.token_to_id(token) is not None


def _stops(tok: _Tok, candidates: Iterable[str]) -> tuple[tuple[str, ...], frozenset[int]]:
    """The candidates the vocabulary has (plus the EOS token's text), and their ids plus EOS ids."""
    eos_text = None
    special_map = getattr(tok, "special_tokens_map", None) or {}
    if isinstance(special_map, dict):
        eos_text = special_map.get("eos_token")
    names = [c for c in dict.fromkeys([*candidates, *([eos_text] if eos_text else [])]) if _has(tok, c)]
    ids = {tok.token_to_id(n) for n in names} | set(getattr(tok, "eos_token_ids", ()) or ())
    return tuple(names), frozenset(i for i in ids if i is not None)


def _adds_dummy_prefix(tok: Any) -> bool:
    """Whether the tokenizer is SentencePiece-style: text at the start gets a '▁' word marker."""
    try:
        ids = tok.encode("a", add_special_tokens=False)
        return bool(ids) and str(tok.id_to_token(ids[0])).startswith("▁")
    except Exception:  # a tokenizer without encode/id_to_token: assume byte-level
        return False


def family_name(name: str | None) -> str | None:
    """A family as `FAMILIES` spells it (aliases and case accepted), or None for an unknown name."""
    if not name:
        return None
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in FAMILIES else None


def fim_metadata(tokenizer: Any) -> tuple[str | None, str | None]:
    """The (family, layout) the model declares about its FIM prompt (tokenizer_config.json's
    `fim_family` and `fim_layout`, as `demi.model.tokenizer.Tokenizer.fim_metadata` holds them);
    None for what it does not declare, or declares as something unknown."""
    meta = getattr(tokenizer, "fim_metadata", None) or {}
    family = family_name(meta.get("fim_family")) if isinstance(meta, dict) else None
    layout = str(meta.get("fim_layout") or "").strip().lower() if isinstance(meta, dict) else ""
    return family, layout if layout in FIM_LAYOUTS else None


def detect_fim(tokenizer: _Tok, layout: str | None = None) -> FimTemplate | None:
    """The FIM template for this tokenizer's model family, or None if it has no FIM tokens. The order
    is `layout` when given, else the model's metadata (`fim_metadata`), else PSM (see the module
    docstring)."""
    t = tokenizer
    declared_family, declared_layout = fim_metadata(t)
    if layout is not None and layout not in FIM_LAYOUTS:
        raise ValueError(f"FIM layout must be one of {', '.join(FIM_LAYOUTS)}, not {layout!r}")
    if _has(t, "<|fim_prefix|>") and _has(t, "<|fim_suffix|>") and _has(t, "<|fim_middle|>"):
        names, ids = _stops(
            t,
            (
                "<|endoftext|>",
                "<|fim_pad|>",
                "<|file_sep|>",
                "<|repo_name|>",
                "<|im_end|>",
                "<|file_separator|>",
                "<|fim_prefix|>",
                "<|fim_suffix|>",
                "<|fim_middle|>",
            ),
        )
        # The family and order are what the model declares, never a guess from the rest of its
        # vocabulary (a fine-tune with a trimmed vocabulary is still Qwen2.5-Coder, prefix first).
        family = declared_family if declared_family in ("qwen2.5-coder", "demi-tiny") else "qwen2.5-coder"
        order = layout or declared_layout or _DEFAULT_LAYOUT.get(family, "psm")
        return FimTemplate(
            family,
            "qwen",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            names,
            ids,
            "<|repo_name|>" if _has(t, "<|repo_name|>") else None,
            "<|file_sep|>" if _has(t, "<|file_sep|>") else None,
            suffix_first=order == "spm",
        )
    if _has(t, "<fim_prefix>") and _has(t, "<fim_suffix>") and _has(t, "<fim_middle>"):
        names, ids = _stops(
            t,
            ("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>", "<repo_name>"),
        )
        if _has(t, "<repo_name>") and _has(t, "<file_sep>"):
            return FimTemplate(
                "starcoder2",
                "starcoder2",
                "<fim_prefix>",
                "<fim_suffix>",
                "<fim_middle>",
                names,
                ids,
                "<repo_name>",
                "<file_sep>",
            )
        return FimTemplate("starcoder", "plain", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", names, ids)
    for mark in ("▁", ""):
        pre, suf, mid = f"{mark}<PRE>", f"{mark}<SUF>", f"{mark}<MID>"
        if _has(t, pre) and _has(t, suf) and _has(t, mid):
            names, ids = _stops(t, (f"{mark}<EOT>", "▁<EOT>", "<EOT>"))
            space = "" if mark else " "  # without the "▁" in the token, the space is literal text
            return FimTemplate("codellama", "codellama", pre, space + suf, space + mid, names, ids, lead_space=True)
    if _has(t, "<｜fim▁begin｜>") and _has(t, "<｜fim▁hole｜>") and _has(t, "<｜fim▁end｜>"):
        names, ids = _stops(
            t, ("<｜end▁of▁sentence｜>", "<|EOT|>", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")
        )
        return FimTemplate("deepseek-coder", "plain", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", names, ids)
    if _has(t, "[SUFFIX]") and _has(t, "[PREFIX]"):
        names, ids = _stops(t, ("</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"))
        return FimTemplate(
            "codestral", "codestral", "[PREFIX]", "[SUFFIX]", None, names, ids, lead_space=_adds_dummy_prefix(t)
        )
    return None


class _FamilyVocab:
    """A vocabulary of one family's FIM tokens alone (byte-level: no SentencePiece space), with an
    optional declared layout: what `detect_fim` reads to build that family's template by name."""

    def __init__(self, tokens: Sequence[str], family: str, layout: str | None):
        self.vocab = {tok: i for i, tok in enumerate(tokens)}
        self.special_tokens_map = {"eos_token": tokens[0]}
        self.eos_token_ids = [0]
        self.fim_metadata = {"fim_family": family, **({"fim_layout": layout} if layout else {})}

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)


def fim_template_for(family: str, layout: str | None = None) -> FimTemplate:
    """The FIM template of a named family (an alias such as "qwen" or "deepseek" works) without its
    tokenizer: the prompt as text with the family's token strings, and its stop strings (there are
    no token ids: `stop_token_ids` is empty). For a client whose server encodes the text, so the
    special-token strings become the tokens. `layout` overrides the family's order (Qwen style)."""
    name = family_name(family)
    if name is None:
        known = ", ".join([*FAMILIES, *ALIASES])
        raise ValueError(f"unknown FIM family {family!r} (known: {known})")
    tpl = detect_fim(_FamilyVocab(_FAMILY_TOKENS[name], name, layout))
    assert tpl is not None and tpl.family == name, (name, tpl)
    return replace(tpl, stop_token_ids=frozenset())
