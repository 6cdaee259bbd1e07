"""The language server's parts on their own: settings, the type-through cache, the debounce and
position arithmetic (the model thread's scheduling is tests/assistant/test_runner.py's)."""

from __future__ import annotations

import pytest

from demi.lsp.cache import CompletionCache
from demi.lsp.debounce import Debouncer
from demi.lsp.settings import LspSettings, merge
from demi.lsp.textutil import index_of_units, units, word_before

# -- settings --------------------------------------------------------------------------------------------


def test_settings_accept_editor_spellings():
    s, problems = merge(
        LspSettings(),
        {
            "demi": {
                "maxTokens": 16,
                "context_tokens": "512",
                "serverUrl": "http://x:1",
                "debounce": {"minMs": 5, "maxMs": 90},
                "quant": "int8",
                "complete": {"temperature": 0.2},
            }
        },
    )
    assert problems == []
    assert (s.max_tokens, s.context_tokens, s.server, s.quant, s.temperature) == (16, 512, "http://x:1", "int8", 0.2)
    assert (s.debounce_min_ms, s.debounce_max_ms) == (5, 90)


def test_settings_problems_keep_the_old_value():
    base = LspSettings(max_tokens=64)
    s, problems = merge(base, {"maxTokens": "many", "quant": "int3", "bogus": True, "enable": 5})
    assert s.max_tokens == 64 and s.quant == base.quant
    assert len(problems) == 4 and any("bogus" in p for p in problems)
    assert merge(base, "not an object")[1] and merge(base, None) == (base, [])


def test_zero_turns_speculation_and_shifted_reuse_off_but_not_other_counts():
    s, problems = merge(LspSettings(), {"speculate": 0, "cacheReuse": 0, "maxTokens": 0})
    assert (s.speculate, s.cache_reuse, s.max_tokens) == (0, 0, LspSettings().max_tokens)
    assert problems == ["setting 'maxTokens': must be at least 1 (got 0); kept 64"]
    s, problems = merge(LspSettings(), {"cacheReuse": -1})
    assert s.cache_reuse == LspSettings().cache_reuse and "at least 0 (0: off)" in problems[0]
    assert merge(LspSettings(), {"cacheReuse": 32})[0].engine_key() != LspSettings().engine_key()


def test_enable_per_language():
    s, _ = merge(LspSettings(), {"enable": {"python": False}})
    assert not s.enabled_for("python") and s.enabled_for("rust") and not s.enabled_for("markdown")
    s, _ = merge(LspSettings(), {"enable": ["go"]})
    assert s.enabled_for("go") and not s.enabled_for("python")
    s, _ = merge(LspSettings(), {"enable": False})
    assert not s.enabled_for("go")


def test_engine_key_changes_only_with_engine_settings():
    a = LspSettings()
    assert merge(a, {"maxTokens": 3})[0].engine_key() == a.engine_key()
    assert merge(a, {"model": "other"})[0].engine_key() != a.engine_key()
    assert merge(a, {"server": None})[0].server is None


# -- cache --------------------------------------------------------------------------------------------------


def test_cache_serves_typed_through_suggestions():
    c = CompletionCache()
    c.put("u", "x = ", "\n", "compute(a, b)")
    assert c.get("u", "x = ", "\n").text == "compute(a, b)"
    hit = c.get("u", "x = comp", "\n")
    assert (hit.text, hit.replace, hit.typed) == ("ute(a, b)", 0, 4)
    assert c.get("u", "x = compute(a, b)", "\n") is None  # typed it all: nothing left to show
    assert c.get("u", "x = cmp", "\n") is None  # typed something else
    assert c.get("u", "x = comp", "\nmore") is None  # the text after the cursor changed
    assert c.get("other", "x = ", "\n") is None


def test_cache_accepts_auto_closed_brackets():
    c = CompletionCache()
    c.put("u", "f", "\n", "oo(bar)")
    hit = c.get("u", "foo(", ")\n")
    assert (hit.text, hit.replace) == ("bar)", 1)
    assert c.get("u", "foo(", "x\n") is None  # not a closing character
    c.put("u", "s = ", "\n", "'abc'")
    assert c.get("u", "s = '", "'\n").replace == 1


def test_cache_is_bounded():
    c = CompletionCache(per_document=2, documents=2)
    for i in range(5):
        c.put("u", f"{i}", "", "x")
    assert c.get("u", "0", "") is None and c.get("u", "4", "") is not None
    for d in ("a", "b", "c"):
        c.put(d, "", "", "x")
    assert c.get("u", "4", "") is None and c.get("c", "", "") is not None


# -- debounce --------------------------------------------------------------------------------------------------


def test_debounce_follows_typing_speed():
    d = Debouncer(min_s=0.015, max_s=0.3)
    assert d.delay() == pytest.approx(0.156)  # nothing measured yet: a typical typist
    now = 100.0
    for _ in range(20):
        d.edited("u", now)
        now += 0.05
    assert d.interval_s == pytest.approx(0.05, rel=0.05)
    assert d.delay() == pytest.approx(0.065, rel=0.05)  # a bit longer than the gap between keystrokes
    d.edited("u", now + 5)  # a pause is not a typing speed
    assert d.interval_s == pytest.approx(0.05, rel=0.05)


def test_debounce_is_minimal_for_a_fast_model_and_a_slow_typist():
    d = Debouncer(min_s=0.01, max_s=0.3)
    for i in range(10):
        d.edited("u", i * 0.4)
    d.observed(0.03)
    assert d.delay() == 0.01
    for _ in range(10):
        d.observed(0.5)
    assert d.delay() == 0.3  # a slow model: wait for the pause (capped)
    d.configure(0.01, 0.3, 0.2)
    assert d.delay() == 0.2


# -- positions -------------------------------------------------------------------------------------------------


def test_units_and_indexes():
    line = "a😀b"
    assert units(line, "utf-16") == 4 and units(line, "utf-32") == 3 and units(line, "utf-8") == 6
    assert index_of_units(line, 3, "utf-16") == 2 and index_of_units(line, 4, "utf-16") == 3
    assert index_of_units(line, 5, "utf-16") is None and index_of_units(line, 0, None) == 0
    assert word_before("x = foo_bar") == "foo_bar" and word_before("x(") == ""


def test_debounce_tolerates_jitter_within_bounds():
    import random

    d = Debouncer(min_s=0.015, max_s=0.3)
    rng, now = random.Random(0), 0.0
    for _ in range(30):
        d.edited("u", now)
        now += 0.05 + rng.uniform(-0.02, 0.04)  # a jittery typist (or a busy machine)
    assert d.deviation_s > 0.005
    assert 1.3 * d.interval_s < d.delay() <= 2 * d.interval_s + 1e-9


def test_strict_params_keep_protocol_enums_and_refuse_wrong_scalars():
    """A diagnostic read from a request keeps its IntEnum severity and tags (so it can be written
    back in a code action), while strings and booleans where integers belong are still refused."""
    from lsprotocol import types as t
    from pygls.protocol import default_converter

    from demi.lsp.protocol import strict_scalars

    converter = default_converter()
    strict_scalars(converter)
    span = {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 3}}
    diag = converter.structure({"range": span, "message": "x", "severity": 1, "tags": [1]}, t.Diagnostic)
    assert diag.severity is t.DiagnosticSeverity.Error and diag.tags == (t.DiagnosticTag.Unnecessary,)
    assert converter.unstructure(diag)["severity"] == 1
    for bad in ({"line": "3", "character": 0}, {"line": True, "character": 0}):
        with pytest.raises(Exception, match="Position"):
            converter.structure(bad, t.Position)
    with pytest.raises(Exception, match="Diagnostic"):
        converter.structure({"range": span, "message": "x", "severity": 9}, t.Diagnostic)
