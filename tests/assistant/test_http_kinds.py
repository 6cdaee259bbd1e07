"""Server kinds that cannot run here (vLLM and TGI need CUDA; Ollama is not installed): small real
HTTP servers that implement each one's documented API and enforce its request schema, so what the
client sends is checked against what the real server would accept.

- vLLM (docs.vllm.ai, "OpenAI-Compatible Server"): `GET /version`, `/v1/models` (`owned_by: vllm`,
  `max_model_len`), `/v1/completions` refuses `suffix` with 400 "suffix is not currently supported"
  and a prompt over the context with "This model's maximum context length is ..."; errors as
  `{"object": "error", "message", "type", "param", "code"}`; `top_k`, `repetition_penalty` accepted;
  `stream_options.include_usage` ends the stream with a usage chunk.
- TGI (huggingface.co/docs/text-generation-inference, the router's OpenAPI): `GET /info` (`model_id`,
  `max_stop_sequences`, `max_total_tokens`), `POST /generate_stream` with `inputs` and `parameters`
  (temperature strictly positive, 0 < top_p < 1, top_k > 0, at most `max_stop_sequences` stops),
  token events `{"token": {"text", "special"}, "generated_text", "details"}`, validation errors as 422
  `{"error", "error_type": "validation"}`.
- Ollama (github.com/ollama/ollama docs/api.md and openai.md): `GET /api/version`, its OpenAI route
  `/v1/completions` with `suffix` (the model's template fills in the middle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from api_servers import Handler, Server

from demi.assistant.config import load_config
from demi.assistant.context import FimContext
from demi.assistant.engines import HttpEngine, Sampling, engine_from_config
from demi.assistant.fim import fim_template_for
from demi.assistant.prompts import ChatPrompt
from demi.assistant.server_kinds import family_from_model_name, kind_name
from demi.model.errors import DemiUserError

PREFIX = "def area(r):\n    return 3.14"
SUFFIX = " * r\n\nprint(area(2))\n"
OTHER = [("pkg/util.py", "PI = 3.14\n")]
CTX = FimContext(PREFIX, SUFFIX, "pkg/geo.py", other_files=OTHER)
REPLY = [" *", " r", "\n"]


def _words(text: str) -> int:
    return max(1, len(text.split()))


# -- vLLM ------------------------------------------------------------------------------------------

VLLM_MODEL = "Qwen/Qwen2.5-Coder-1.5B"
VLLM_CONTEXT = 4096
_VLLM_FIELDS = {
    "model", "prompt", "suffix", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stream",
    "stream_options", "n", "best_of", "echo", "frequency_penalty", "presence_penalty", "repetition_penalty",
    "logprobs", "user", "logit_bias", "messages", "ignore_eos", "stop_token_ids", "skip_special_tokens",
}  # fmt: skip


def _vllm_error(h: Handler, status: int, message: str, kind: str = "BadRequestError") -> None:
    h.send_json(status, {"object": "error", "message": message, "type": kind, "param": None, "code": status})


def _vllm_check(h: Handler, body: dict[str, Any], chat: bool, model: str) -> bool:
    unknown = set(body) - _VLLM_FIELDS
    if body.get("model") != model:
        _vllm_error(h, 404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
    elif unknown:
        _vllm_error(h, 400, f"unexpected fields {sorted(unknown)}")
    elif not chat and body.get("suffix") is not None:
        _vllm_error(h, 400, "suffix is not currently supported")
    elif not isinstance(body.get("max_tokens", 16), int) or not isinstance(body.get("temperature", 1.0), (int, float)):
        _vllm_error(h, 400, "1 validation error: max_tokens must be an integer")
    elif not 0 < body.get("top_p", 1.0) <= 1 or body.get("top_k", -1) == 0:
        _vllm_error(h, 400, "top_p must be in (0, 1], got 0.")
    elif body.get("stream_options") and not body.get("stream"):
        _vllm_error(h, 400, "Stream options can only be defined when `stream=True`.")
    else:
        text = json.dumps(body.get("messages")) if chat else str(body.get("prompt"))
        if _words(text) + body.get("max_tokens", 16) > VLLM_CONTEXT:
            _vllm_error(
                h,
                400,
                f"This model's maximum context length is {VLLM_CONTEXT} tokens. However, you requested "
                f"{_words(text) + body['max_tokens']} tokens. Please reduce the length of the messages or completion.",
            )
        else:
            return True
    return False


def vllm_server(model: str = VLLM_MODEL) -> Server:
    def completions(h: Handler, body: Any, chat: bool = False) -> None:
        if not _vllm_check(h, body, chat, model):
            return
        h.start_events()
        for piece in REPLY:
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": None, "stop_reason": None}
            choice.update({"delta": {"content": piece}} if chat else {"text": piece})
            h.event({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model, "choices": [choice]})
        h.event({"id": "cmpl-1", "choices": [{"index": 0, "text": "", "finish_reason": "length", "stop_reason": None}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = _words(json.dumps(body.get("messages")) if chat else body["prompt"])
            usage = {"prompt_tokens": prompt, "completion_tokens": len(REPLY), "total_tokens": prompt + len(REPLY)}
            h.event({"id": "cmpl-1", "choices": [], "usage": usage})
        h.wfile.write(b"data: [DONE]\n\n")

    card = {"id": model, "object": "model", "created": 0, "owned_by": "vllm", "root": model,
            "parent": None, "max_model_len": VLLM_CONTEXT}  # fmt: skip
    return Server(
        {
            ("GET", "/version"): lambda h, _: h.send_json(200, {"version": "0.8.5"}),
            ("GET", "/v1/models"): lambda h, _: h.send_json(200, {"object": "list", "data": [card]}),
            ("POST", "/v1/completions"): completions,
            ("POST", "/v1/chat/completions"): lambda h, b: completions(h, b, chat=True),
        }
    )


# -- TGI -------------------------------------------------------------------------------------------

TGI_MODEL = "bigcode/starcoder2-3b"
TGI_INFO = {
    "model_id": TGI_MODEL, "model_sha": None, "model_dtype": "torch.float16", "model_device_type": "cuda",
    "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128, "max_best_of": 2,
    "max_stop_sequences": 4, "max_input_tokens": 4095, "max_total_tokens": 4096, "validation_workers": 2,
    "max_client_batch_size": 4, "router": "text-generation-router", "version": "2.4.0", "sha": None,
}  # fmt: skip
_TGI_PARAMETERS = {
    "best_of", "temperature", "repetition_penalty", "frequency_penalty", "top_k", "top_p", "typical_p",
    "do_sample", "max_new_tokens", "return_full_text", "stop", "truncate", "watermark", "details",
    "decoder_input_details", "seed", "top_n_tokens", "grammar", "adapter_id",
}  # fmt: skip


def _tgi_invalid(params: dict[str, Any]) -> str | None:
    """TGI's router validation (validation.rs), in its words."""
    unknown = set(params) - _TGI_PARAMETERS
    if unknown:
        return f"Failed to deserialize the JSON body: unknown field `{sorted(unknown)[0]}`"
    if "temperature" in params and not params["temperature"] > 0:
        return "`temperature` must be strictly positive"
    if "top_p" in params and not 0 < params["top_p"] < 1:
        return "`top_p` must be > 0.0 and < 1.0"
    if "top_k" in params and not params["top_k"] > 0:
        return "`top_k` must be strictly positive"
    if "repetition_penalty" in params and not params["repetition_penalty"] > 0:
        return "`repetition_penalty` must be strictly positive"
    if len(params.get("stop") or []) > TGI_INFO["max_stop_sequences"]:
        return f"`stop` supports up to {TGI_INFO['max_stop_sequences']} stop sequences. Given: {len(params['stop'])}"
    if params.get("max_new_tokens", 100) <= 0:
        return "`max_new_tokens` must be strictly positive"
    return None


def tgi_server() -> Server:
    def generate_stream(h: Handler, body: Any) -> None:
        params = body.get("parameters") or {}
        problem = (
            "Failed to deserialize the JSON body: missing field `inputs`" if "inputs" not in body else None
        ) or _tgi_invalid(params)
        if problem:
            h.send_json(422, {"error": f"Input validation error: {problem}", "error_type": "validation"})
            return
        h.start_events()
        tokens = [(t, False) for t in REPLY] + [("<|endoftext|>", True)]
        for i, (text, special) in enumerate(tokens):
            last = i == len(tokens) - 1
            event = {
                "index": i + 1,
                "token": {"id": 100 + i, "text": text, "logprob": -0.1, "special": special},
                "generated_text": "".join(REPLY) if last else None,
                "details": {"finish_reason": "eos_token", "generated_tokens": len(tokens), "seed": None}
                if last and params.get("details")
                else None,
            }
            h.event(event)

    def chat(h: Handler, body: Any) -> None:
        if "temperature" in body and not body["temperature"] > 0:
            h.send_json(422, {"error": "Input validation error: `temperature` must be strictly positive",
                              "error_type": "validation"})  # fmt: skip
            return
        h.start_events()
        for piece in REPLY:
            choice = {"index": 0, "delta": {"role": "assistant", "content": piece}, "logprobs": None,
                      "finish_reason": None}  # fmt: skip
            h.event({"object": "chat.completion.chunk", "model": TGI_MODEL, "choices": [choice]})
        h.event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        h.wfile.write(b"data: [DONE]\n\n")

    return Server(
        {
            ("GET", "/info"): lambda h, _: h.send_json(200, TGI_INFO),
            ("POST", "/generate_stream"): generate_stream,
            ("POST", "/v1/chat/completions"): chat,
        }
    )


# -- Ollama ----------------------------------------------------------------------------------------

OLLAMA_MODEL = "qwen2.5-coder:1.5b"


def ollama_server() -> Server:
    def completions(h: Handler, body: Any) -> None:
        if body.get("model") != OLLAMA_MODEL:
            h.send_json(404, {"error": {"message": f"model \"{body.get('model')}\" not found, try pulling it first",
                                        "type": "api_error", "param": None, "code": None}})  # fmt: skip
            return
        h.start_events()
        for piece in REPLY:
            h.event({"id": "cmpl-1", "object": "text_completion", "model": OLLAMA_MODEL,
                     "choices": [{"text": piece, "index": 0, "finish_reason": None}]})  # fmt: skip
        h.event({"id": "cmpl-1", "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]})
        h.wfile.write(b"data: [DONE]\n\n")

    card = {"id": OLLAMA_MODEL, "object": "model", "created": 1, "owned_by": "library"}
    return Server(
        {
            ("GET", "/api/version"): lambda h, _: h.send_json(200, {"version": "0.5.7"}),
            ("GET", "/v1/models"): lambda h, _: h.send_json(200, {"object": "list", "data": [card]}),
            ("POST", "/v1/completions"): completions,
        }
    )


@pytest.fixture
def server(request) -> Iterator[Server]:
    srv = {"vllm": vllm_server, "tgi": tgi_server, "ollama": ollama_server}[request.param]()
    yield srv
    srv.close()


def posted(srv: Server) -> tuple[str, dict[str, Any]]:
    method, path, body, _ = [s for s in srv.seen if s[0] == "POST"][-1]
    return path, body


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "server,kind,model,context",
    [
        ("vllm", "vllm", VLLM_MODEL, VLLM_CONTEXT),
        ("tgi", "tgi", TGI_MODEL, 4096),
        ("ollama", "ollama", OLLAMA_MODEL, None),
    ],
    indirect=["server"],
)
def test_each_kind_is_detected_once(server, kind, model, context):
    engine = HttpEngine(server.url + "/v1")
    assert engine.kind == kind and engine.model == model and engine.info().context == context
    assert engine.info().server_kind == kind
    probes = len(server.seen)
    engine.infill(CTX, max_new_tokens=8)
    engine.infill(CTX, max_new_tokens=8)
    assert len([s for s in server.seen if s[0] == "GET"]) == len([s for s in server.seen[:probes] if s[0] == "GET"])


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_vllm_gets_the_prompt_built_here_never_a_suffix(server):
    engine = HttpEngine(server.url)
    res = engine.infill(CTX, stop=["\n\n"], max_new_tokens=8, sampling=Sampling(top_k=20, repetition_penalty=1.1))
    path, body = posted(server)
    tpl = fim_template_for("qwen2.5-coder")
    assert path == "/v1/completions" and "suffix" not in body
    assert body["prompt"] == tpl.build(PREFIX, SUFFIX, path="pkg/geo.py", other_files=OTHER)
    assert body["stop"][0] == "\n\n" and set(body["stop"][1:]) <= set(tpl.stop_strings)
    assert (
        body["top_k"] == 20 and body["repetition_penalty"] == 1.1 and body["stream_options"] == {"include_usage": True}
    )
    assert res.text == " * r\n" and res.extra["fim"] == "qwen2.5-coder" and res.extra["prompt_tokens_from"] == "server"
    assert res.prompt_tokens == _words(body["prompt"]) and res.extra["completion_tokens"] == 3


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_vllm_errors_are_one_line(server):
    engine = HttpEngine(server.url)
    with pytest.raises(DemiUserError, match=r"answered 400: This model's maximum context length is 4096 tokens"):
        engine.complete("word " * 5000, max_new_tokens=8)
    with pytest.raises(DemiUserError, match="answered 400: suffix is not currently supported"):
        engine.complete(PREFIX, suffix=SUFFIX, max_new_tokens=4)  # what the old client sent for every FIM


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_vllm_chat(server):
    res = HttpEngine(server.url).chat(ChatPrompt([{"role": "user", "content": "hi"}], "hi"), max_new_tokens=8)
    path, body = posted(server)
    assert path == "/v1/chat/completions" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert res.text == "".join(REPLY)


@pytest.mark.parametrize("server", ["tgi"], indirect=True)
def test_tgi_gets_its_native_parameters(server):
    engine = HttpEngine(server.url)
    stops = ["\n\n", "a", "b", "c", "d"]
    res = engine.infill(CTX, stop=stops, max_new_tokens=8)  # greedy: no temperature, do_sample false
    path, body = posted(server)
    tpl = fim_template_for("starcoder2")  # from the model id
    assert path == "/generate_stream" and body["inputs"] == tpl.build(PREFIX, SUFFIX, "pkg/geo.py", None, OTHER)
    params = body["parameters"]
    assert params["do_sample"] is False and "temperature" not in params and "top_p" not in params
    assert params["stop"] == stops[:4] and params["max_new_tokens"] == 8
    assert res.text == " * r\n" and "<|endoftext|>" not in res.text and res.finish_reason == "stop"
    sampled = engine.complete("x", max_new_tokens=4, sampling=Sampling(temperature=0.7, top_p=1.0, top_k=5, seed=3))
    params = posted(server)[1]["parameters"]
    assert params["temperature"] == 0.7 and "top_p" not in params and params["top_k"] == 5 and params["seed"] == 3
    assert sampled.text == " * r\n"
    res = engine.chat(ChatPrompt([{"role": "user", "content": "hi"}], "hi"), max_new_tokens=8)
    path, body = posted(server)
    assert path == "/v1/chat/completions" and "temperature" not in body and res.text == "".join(REPLY)


@pytest.mark.parametrize("server", ["tgi"], indirect=True)
def test_tgi_validation_errors_are_user_errors(server):
    with pytest.raises(DemiUserError, match=r"answered 422: Input validation error: `max_new_tokens`"):
        HttpEngine(server.url).complete("x", max_new_tokens=0)


@pytest.mark.parametrize("server", ["ollama"], indirect=True)
def test_ollama_fills_in_the_middle_with_suffix(server):
    res = HttpEngine(server.url).infill(CTX, stop=["\n"], max_new_tokens=8)
    path, body = posted(server)
    assert path == "/v1/completions" and body["suffix"] == SUFFIX and body["model"] == OLLAMA_MODEL
    assert body["prompt"] == "# pkg/util.py\nPI = 3.14\n\n# pkg/geo.py\n" + PREFIX  # other files as comments
    assert res.text == " * r" and res.extra["fim"] == "server"


@pytest.mark.parametrize("server", ["ollama"], indirect=True)
def test_a_family_setting_wins_over_native_fim(server):
    engine = HttpEngine(server.url, fim="codellama")
    engine.infill(CTX, max_new_tokens=4)
    body = posted(server)[1]
    assert "suffix" not in body and body["prompt"].startswith("<PRE> # pkg/util.py")


@pytest.mark.parametrize("server", ["vllm"], indirect=True)
def test_server_kind_setting_skips_detection(server, tmp_path):
    env = {"DEMI_SERVER": server.url, "DEMI_SERVER_KIND": "vllm", "DEMI_CONFIG": str(tmp_path / "none.toml")}
    engine = engine_from_config(load_config(environ=env))
    assert isinstance(engine, HttpEngine) and engine.kind == "vllm"
    assert [p for m, p, *_ in server.seen] == ["/v1/models"]  # no probing, only the model list
    env["DEMI_SERVER_MODEL_FAMILY"] = "deepseek"
    engine = engine_from_config(load_config(environ=env))
    assert engine.fim_template.family == "deepseek-coder"


def test_an_unknown_family_on_a_server_without_fim_completes_the_prefix(caplog):
    srv = vllm_server("my-org/secret-model")  # a name that does not tell its family
    try:
        engine = HttpEngine(srv.url)
        res = engine.infill(CTX, max_new_tokens=4)
        body = posted(srv)[1]
        assert "suffix" not in body and body["prompt"].endswith(PREFIX) and "<|fim" not in body["prompt"]
        assert res.extra["fim"] is None and engine.info().fim is None
        assert "set server_model_family" in caplog.text
    finally:
        srv.close()


@pytest.mark.parametrize(
    "name,family",
    [
        ("Qwen/Qwen2.5-Coder-7B-Instruct", "qwen2.5-coder"),
        ("qwen2.5-coder:1.5b", "qwen2.5-coder"),
        ("/models/qwen2.5-coder-0.5b-q8_0.gguf", "qwen2.5-coder"),
        ("bigcode/starcoder2-15b", "starcoder2"),
        ("bigcode/starcoderbase-1b", "starcoder"),
        ("codellama/CodeLlama-7b-hf", "codellama"),
        ("deepseek-ai/deepseek-coder-6.7b-base", "deepseek-coder"),
        ("mistralai/Codestral-22B-v0.1", "codestral"),
        ("demi-tiny", "demi-tiny"),
        ("meta-llama/Llama-3.1-8B", None),
        ("Qwen/Qwen2.5-7B-Instruct", None),
    ],
)
def test_family_from_model_name(name, family):
    assert family_from_model_name(name) == family


def test_kind_names():
    assert kind_name("llama-server") == "llama.cpp" and kind_name("auto") is None and kind_name(None) is None
    assert kind_name("TGI") == "tgi"
    with pytest.raises(ValueError, match="unknown server kind"):
        kind_name("triton")


def test_lsp_settings_take_server_kind_and_family():
    from demi.lsp.settings import LspSettings, merge

    s, problems = merge(LspSettings(), {"demi": {"serverKind": "vllm", "serverModelFamily": "qwen", "serverFim": "x"}})
    assert not problems and (s.server_kind, s.server_model_family, s.server_fim) == ("vllm", "qwen", "x")
    assert s.engine_key() != LspSettings().engine_key()  # a new kind or family reloads the engine
