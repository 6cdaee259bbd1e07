"""Engine clients and the tasks on a real tiny model: in-process, and HTTP against a real `demi serve`.

The model is a random-weight qwen2 with the byte-level tokenizer (FIM and ChatML tokens, a chat
template), so its text is noise; what is checked is plumbing and placement: the prompt each
client builds, that both clients give the same greedy text, streaming, cancellation, and how
explain and complete assemble their answers. The HTTP client is tested against `demi serve`
(serve/server.py) in a background thread, not against a fake.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import serve, tiny_checkpoint
from hf_models import save_family
from tokenizers_fixture import make_llama_tokenizer

from demi.assistant.complete import complete
from demi.assistant.context import FimContext
from demi.assistant.document import Document
from demi.assistant.engines import (
    CancelToken,
    HttpEngine,
    InProcessEngine,
    Sampling,
    ServerUnreachableError,
    open_engine,
)
from demi.assistant.explain import explain
from demi.assistant.fim import detect_fim
from demi.assistant.prompts import ChatPrompt, looks_instruct
from demi.model.engine import LocalModel
from demi.model.errors import DemiUserError

CONTEXT = 1024
CODE = '''import os


def scale(values, factor=2):
    """Multiply every value."""
    out = []
    for v in values:
        out.append(v * factor)
    return out


def main():
    print(scale([1, 2, 3]))
'''


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("qwen2", max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def local(model_dir) -> InProcessEngine:
    return open_engine(str(model_dir), context=CONTEXT)


@pytest.fixture(scope="module")
def server(model_dir):
    with serve(LocalModel.load(str(model_dir), context=CONTEXT)) as srv:
        yield srv


@pytest.fixture(scope="module")
def remote(server, model_dir) -> HttpEngine:
    return open_engine(str(model_dir), server=server.url)


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> Document:
    p = tmp_path_factory.mktemp("code") / "scale.py"
    p.write_text(CODE, encoding="utf-8")
    return Document.load(p)


PROMPT = ChatPrompt([{"role": "user", "content": "Say hi."}], "Q: say hi\nA:", ["\nQ:"])


# -- in-process ------------------------------------------------------------------------------------


def test_in_process_info(local, model_dir):
    info = local.info()
    assert (info.kind, info.fim, info.chat_template, info.instruct) == ("in-process", "demi-tiny", True, False)
    assert info.context == CONTEXT and 0 < info.parameters < 1_000_000 and not info.large
    assert local.count_tokens("def f(x):") == len(local.local.tokenizer.encode("def f(x):"))


def test_infill_uses_the_family_template(local):
    ctx = FimContext("def add(a, b):\n    return ", "\n", path="m.py")
    got = local.infill(ctx, max_new_tokens=8)
    tpl = detect_fim(local.local.tokenizer)
    prompt = tpl.build("def add(a, b):\n    return", ctx.suffix, path="m.py")  # the space is healed
    assert prompt.startswith("<|file_sep|>m.py\n<|fim_suffix|>\n<|fim_prefix|>def add")  # demi-tiny: SPM
    ref = local.complete(prompt, max_new_tokens=8, stop_ids=local.local.stop_ids | set(tpl.stop_token_ids), heal=" ")
    assert got.text == ref.text and got.extra["fim"] == "demi-tiny"
    assert got.prompt_tokens == len(local.local.tokenizer.encode(prompt))


def test_chat_uses_the_template_and_base_models_get_plain_text(local, tmp_path):
    res = local.chat(PROMPT, max_new_tokens=6)
    tok = local.local.tokenizer
    ids = tok.encode(tok.apply_chat_template(PROMPT.messages, add_generation_prompt=True), add_special_tokens=False)
    assert res.extra["chat_template"] is True and res.prompt_tokens == len(ids)
    # a llama-style tokenizer without a chat template: the completion-style text is the prompt
    d = tmp_path / "llama"
    save_family("llama", d, max_position_embeddings=256)
    make_llama_tokenizer(d)
    base = open_engine(str(d), context=256)
    out = base.chat(PROMPT, max_new_tokens=6)
    assert out.extra["chat_template"] is False
    assert out.prompt_tokens == len(base.local.tokenizer.encode(PROMPT.plain))
    assert base.info().fim is None and base.info().chat_template is False


def test_cancel_stops_generation(local):
    cancel = CancelToken()
    pieces: list[str] = []

    def on_text(p: str) -> None:
        pieces.append(p)
        cancel.cancel()

    res = local.complete("def f(x):", on_text=on_text, max_new_tokens=50, cancel=cancel)
    assert res.finish_reason == "cancelled" and len(pieces) == 1 and res.completion_tokens < 50


def test_instruct_names_are_flagged(tmp_path):
    assert looks_instruct("Qwen/Qwen2.5-Coder-1.5B-Instruct") and looks_instruct("deepseek-coder-6.7b-chat")
    assert not looks_instruct("Qwen/Qwen2.5-Coder-1.5B") and not looks_instruct("demi-tiny")
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"_name_or_path": "bigcode/starcoder2-3b-instruct"}')
    assert looks_instruct("m", d)


# -- tasks on the in-process engine ----------------------------------------------------------------


def test_explain_small_model_leads_with_facts(local, doc):
    pieces: list[str] = []
    res = explain(local, doc, symbol="scale", max_tokens=12, on_text=pieces.append)
    md = res.markdown
    assert "".join(pieces) == md and res.lead == "facts"
    facts_at = md.index("### Static analysis (read from the code: certain)")
    model_at = md.index(f"### Explanation (written by the model `{local.name}`")
    assert facts_at < model_at and res.model_text in md[model_at:]
    assert "- **Signature:** `def scale(values, factor=2)`" in md
    assert "  - `factor` (no type given), default `2`" in md
    assert "- **Returns:** `return` `out`" in md and "`out.append`" in md
    assert res.symbol == "scale" and res.lines == (4, 9) and res.completion_tokens <= 12
    j = res.as_json()
    assert {"path", "symbol", "explanation", "model", "completion_tokens", "seconds"} <= set(j)


def test_explain_model_lead_puts_facts_after(local, doc):
    res = explain(local, doc, lines=(12, 13), max_tokens=4, lead="model")
    md = res.markdown
    assert md.index("### Explanation") < md.index("### Static analysis") and res.lead == "model"
    assert "lines 12-13" in md


def test_complete_places_text_at_the_cursor(local, doc):
    offset = doc.offset(7, 5)  # start of `for v in values:` inside the body (text after the cursor)
    res = complete(local, doc, offset, max_tokens=8)
    assert (res.line, res.col, res.mode) == (7, 5, "single") and "\n" not in res.completion
    assert res.fim == "demi-tiny" and res.prompt_tokens > 0 and res.completion_tokens <= 8
    end_of_body = doc.offset(9, 15)  # end of `return out`: nothing after the cursor on the line
    res2 = complete(local, doc, end_of_body, max_tokens=8)
    assert res2.mode == "single" and res2.completion == res2.completion.rstrip()


def test_complete_warns_about_instruct_models(model_dir, doc, tmp_path):
    link = tmp_path / "tiny-coder-Instruct"
    link.symlink_to(model_dir, target_is_directory=True)
    res = complete(open_engine(str(link), context=CONTEXT), doc, doc.offset(13, 5), max_tokens=2)
    assert any("looks like an instruct (chat) model" in w for w in res.warnings)


def test_complete_budget_respects_a_small_context(tmp_path):
    d = tiny_checkpoint(tmp_path / "small", max_position_embeddings=128)
    engine = open_engine(str(d), context=128)
    big = Document.from_text("".join(f"item_{i} = {i}\n" for i in range(500)), "big.py")
    res = complete(engine, big, big.line_start(250), max_tokens=16, budget=4096)
    assert res.prompt_tokens + 16 <= 128
    assert "prefix cut to the last" in " ".join(res.notes)


# -- HTTP against demi serve -----------------------------------------------------------------------


def test_http_model_name_and_info(remote, server, model_dir):
    assert remote.model == str(model_dir) and remote.info().kind == "http" and remote.info().large
    assert HttpEngine(server.url).model == str(model_dir)  # no --model: the server's first model
    assert HttpEngine(server.url, "elsewhere/tiny").model == str(model_dir)  # the server's only model
    assert remote.tokenizer is not None  # the model is local too: exact token budgets
    assert remote.count_tokens("def f(x):") == len(remote.tokenizer.encode("def f(x):", add_special_tokens=False))


def test_http_completion_equals_in_process_greedy(local, remote):
    pieces: list[str] = []
    res = remote.complete("def add(a, b):", on_text=pieces.append, max_new_tokens=10, sampling=Sampling())
    ref = local.complete("def add(a, b):", max_new_tokens=10)
    assert res.text == ref.text == "".join(pieces)
    assert res.prompt_tokens == ref.prompt_tokens and res.extra["completion_tokens"] == ref.completion_tokens


def test_http_fim_and_chat_equal_in_process(local, remote):
    ctx = FimContext("def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n")
    assert remote.infill(ctx, max_new_tokens=8).text == local.infill(ctx, max_new_tokens=8).text
    assert remote.chat(PROMPT, max_new_tokens=8).text == local.chat(PROMPT, max_new_tokens=8).text


def test_http_cancel_mid_stream(remote):
    cancel = CancelToken()
    seen: list[str] = []

    def on_text(p: str) -> None:
        seen.append(p)
        if len(seen) == 2:
            cancel.cancel()

    res = remote.complete("def f(x):", on_text=on_text, max_new_tokens=400, cancel=cancel)
    assert res.finish_reason == "cancelled" and len(seen) < 100


def test_http_tasks_run_through_the_server(remote, doc):
    res = explain(remote, doc, symbol="main", max_tokens=6)
    assert res.lead == "model" and res.markdown.index("### Explanation") < res.markdown.index("### Static")
    c = complete(remote, doc, doc.offset(13, 5), max_tokens=6)
    assert c.fim == "server" and c.line == 13


def test_unreachable_server_is_one_clear_user_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = HttpEngine(f"http://127.0.0.1:{port}", "m", connect_timeout=2)
    with pytest.raises(ServerUnreachableError, match=rf"cannot reach the server at http://127.0.0.1:{port}"):
        engine.complete("x", max_new_tokens=1)
    with pytest.raises(DemiUserError, match="bad server URL"):
        HttpEngine("ftp://x")


def test_server_rejection_is_a_user_error(remote):
    with pytest.raises(DemiUserError, match="answered 400: .*maximum context length"):
        remote.complete("x " * 2000, max_new_tokens=4)
