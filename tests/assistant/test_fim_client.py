"""The HTTP client builds the FIM prompt itself when the remote model's family is known (the
`server_fim` setting), with the same template code as in-process, and sends it raw with the
template's stop strings; otherwise it sends `suffix` and the server builds it. A small local server
records what it receives (`helpers.ScriptedServer`); tests/assistant/test_qwen_standin.py does the
same against a real `demi serve`."""

from __future__ import annotations

import pytest
from helpers import ScriptedServer

from demi.assistant.config import ConfigFileError, load_config
from demi.assistant.context import FimContext
from demi.assistant.engines import HttpEngine, engine_from_config
from demi.assistant.fim import fim_template_for
from demi.model.errors import DemiUserError

PREFIX = "def area(r):\n    return 3.14"
SUFFIX = " * r\n\nprint(area(2))\n"
OTHER = [("pkg/util.py", "PI = 3.14\n")]
CTX = FimContext(PREFIX, SUFFIX, "pkg/geo.py", other_files=OTHER)


@pytest.fixture
def server():
    srv = ScriptedServer(" * r", model_id="remote-coder")
    yield srv
    srv.close()


@pytest.mark.parametrize(
    "family,expected",
    [
        (
            "qwen",
            "<|file_sep|>pkg/util.py\nPI = 3.14\n<|file_sep|>pkg/geo.py\n"
            f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>",
        ),
        (
            "demi-tiny",
            "<|file_sep|>pkg/util.py\nPI = 3.14\n<|file_sep|>pkg/geo.py\n"
            f"<|fim_suffix|>{SUFFIX}<|fim_prefix|>{PREFIX}<|fim_middle|>",
        ),
        (
            "starcoder2",
            "<file_sep>pkg/util.py\nPI = 3.14\n<file_sep>"
            f"<fim_prefix>pkg/geo.py\n{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>",
        ),
        (
            "deepseek",
            f"<｜fim▁begin｜># pkg/util.py\nPI = 3.14\n\n# pkg/geo.py\n{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>",
        ),
        ("codellama", f"<PRE> # pkg/util.py\nPI = 3.14\n\n# pkg/geo.py\n{PREFIX} <SUF>{SUFFIX} <MID>"),
        ("codestral", f"[SUFFIX]{SUFFIX}[PREFIX]# pkg/util.py\nPI = 3.14\n\n# pkg/geo.py\n{PREFIX}"),
    ],
)
def test_known_family_sends_the_built_prompt(server, family, expected):
    client = HttpEngine(server.url, fim=family)
    res = client.infill(CTX, stop=["\n"], max_new_tokens=8)
    assert res.text == " * r"
    body = server.requests[-1]
    assert body["prompt"] == expected and "suffix" not in body
    tpl = fim_template_for(family)
    assert body["prompt"] == tpl.build(PREFIX, SUFFIX, path="pkg/geo.py", other_files=OTHER)
    # the caller's stop first, then the template's own (an OpenAI server takes four)
    assert body["stop"] == ["\n", *tpl.stop_strings][:4]
    assert res.extra["fim"] == tpl.family and client.info().fim == tpl.family
    assert client.info().fim_layout == tpl.order


def test_unknown_family_sends_suffix(server):
    client = HttpEngine(server.url)
    res = client.infill(FimContext(PREFIX, SUFFIX, "pkg/geo.py"), stop=["\n"], max_new_tokens=8)
    body = server.requests[-1]
    assert body["prompt"] == PREFIX and body["suffix"] == SUFFIX and body["stop"] == ["\n"]
    assert res.extra["fim"] == "server" and client.info().fim == "server" and client.info().fim_layout is None


def test_a_local_tokenizer_gives_the_models_own_template(server, tiny_checkpoints):
    """With the model's tokenizer on this machine the client uses the template detected on it, in
    the named family's order (its exact stops), still as text."""
    from demi.model.tokenizer import Tokenizer

    tok = Tokenizer.from_dir(tiny_checkpoints())  # Demi's byte-level tokenizer: Qwen-style tokens
    client = HttpEngine(server.url, fim="qwen", tokenizer=tok)
    assert client.fim_template.family == "qwen2.5-coder" and client.fim_template.order == "psm"
    client.infill(FimContext(PREFIX, SUFFIX), max_new_tokens=4)
    assert server.requests[-1]["prompt"] == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"


def test_the_server_fim_setting(server, tmp_path):
    env = {"DEMI_SERVER": server.url, "DEMI_SERVER_FIM": "qwen", "DEMI_CONFIG": str(tmp_path / "none.toml")}
    cfg = load_config(environ=env)
    assert cfg["server_fim"] == "qwen"
    engine = engine_from_config(cfg)
    assert isinstance(engine, HttpEngine) and engine.fim_template.family == "qwen2.5-coder"
    with pytest.raises(ConfigFileError):
        load_config(environ={**env, "DEMI_SERVER_FIM": "gpt-4"})
    with pytest.raises(DemiUserError, match="unknown FIM family"):
        HttpEngine(server.url, fim="gpt-4")
