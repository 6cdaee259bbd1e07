"""Request bodies and errors of `demi serve`'s OpenAI-compatible API.

Validation is strict and every failure is a 400 in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` (never FastAPI's 422 `detail` list):

- malformed JSON or a body that is not a JSON object: 400, code `invalid_json` / `invalid_body`;
- an unknown field: 400, code `unknown_parameter` (as OpenAI does: a typo such as `max_token` must not
  be silently ignored). OpenAI fields we cannot honour are accepted only at their neutral value
  (`n: 1`, `echo: false`, `logprobs: null`, `frequency_penalty: 0`, `tools: []`, ...) and rejected
  otherwise with code `unsupported_parameter`; `user`, `metadata`, `store`, `service_tier` are ignored;
- a wrong type: 400, code `invalid_type` (no coercion: `"max_tokens": "16"`, `true` or `2.5` is an error;
  an integral number such as `16.0` is an integer, as JSON Schema says);
- a value out of range: 400, code `invalid_value`; a prompt that does not fit: 400,
  code `context_length_exceeded`.

Extensions over OpenAI: `top_k`, `repetition_penalty` (Hugging Face style, multiplicative; OpenAI's
additive `frequency_penalty`/`presence_penalty` are not the same thing and are rejected unless 0),
`ignore_eos` (generate exactly `max_tokens`, for benchmarks) and `speculate` (draft tokens per step of
speculative decoding from the prompt, 0 to `MAX_SPECULATE`; 0 is off; default: the server's setting for
chat, 0 for completions). In answers, `usage.speculation` (`k`, `drafted`, `accepted`, `acceptance`, `steps`; absent
when the run did not speculate) beside `usage.prompt_tokens_details.cached_tokens`.

The OpenAPI document (`/openapi.json`) states every rule the handlers enforce that JSON Schema can say
(ranges, neutral-only values, `stream_options` only with `stream: true`, `suffix` only with a text
prompt), so a schema-valid request is
accepted unless its prompt does not fit the context (`context_length_exceeded`), and a schema-invalid one
is a 400. The handlers do the checking themselves rather than pydantic, so each failure keeps its own
message and code; `tests/serve/test_server_fuzz.py` fuzzes the document against a live server to keep the two
in step. `document()` adds the per-model bounds (context, vocabulary) and the guard's responses.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

MAX_STOP = 16
MAX_STOP_LEN = 512
# A temperature this low samples the top token anyway: it runs greedy (as vLLM does), since dividing the
# logits by, say, 1e-300 overflows float32 and sampling fails on NaNs.
GREEDY_BELOW = 1e-5
# The lowest repetition penalty (HF style: a seen token's logit is divided by it); far lower ones push the
# logits to infinity. Below 1 it favours repeating; sensible values are 1.0 to 1.3.
MIN_REPETITION_PENALTY = 0.01
MAX_REPETITION_PENALTY = 10.0
# The most draft tokens per step a request may ask for (`speculate`); the engine may check fewer.
MAX_SPECULATE = 16


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, type_: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or _type_for(status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _type_for(status: int) -> str:
    """OpenAI's types: every client error (401 and 404 included) is an `invalid_request_error`."""
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _integral(value: Any) -> Any:
    """16.0 is the integer 16 (JSON has one number type, and JSON Schema counts 16.0 as an integer)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]


# Request fields are parsed by pydantic (types only) and checked by the handlers (values), so each
# failure keeps its own message and code; `WithJsonSchema` documents the values the handlers accept.
def _neutral(*values: Any) -> WithJsonSchema:
    """An OpenAI field accepted only at its neutral value(s) or null."""
    return WithJsonSchema({"anyOf": [{"enum": list(values)}, {"type": "null"}]})


_EMPTY_OR_NULL = WithJsonSchema({"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]})
_STOP_TEXT = {"type": "string", "maxLength": MAX_STOP_LEN}
_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}

Temperature = Annotated[float, WithJsonSchema({"type": "number", "minimum": 0, "maximum": 2})]
TopP = Annotated[float, WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1})]
TopK = Annotated[JsonInt, WithJsonSchema({"type": "integer", "minimum": 0})]
RepetitionPenalty = Annotated[
    float, WithJsonSchema({"type": "number", "minimum": MIN_REPETITION_PENALTY, "maximum": MAX_REPETITION_PENALTY})
]
Speculate = Annotated[JsonInt, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": MAX_SPECULATE})]
Seed = Annotated[JsonInt, WithJsonSchema({"type": "integer"})]  # any integer, taken modulo 2**64 (as torch does)
MaxTokens0 = Annotated[JsonInt, WithJsonSchema({"type": "integer", "minimum": 0})]  # `document` adds the maximum
MaxTokens1 = Annotated[JsonInt, WithJsonSchema({"type": "integer", "minimum": 1})]
StopText = Annotated[str, WithJsonSchema(_STOP_TEXT)]
StopList = Annotated[list[str], WithJsonSchema({"type": "array", "items": _STOP_TEXT, "maxItems": MAX_STOP})]
PromptText = Annotated[str, WithJsonSchema({"type": "string", "minLength": 1})]
PromptIds = Annotated[list[JsonInt], WithJsonSchema(_TOKEN_IDS)]  # `document` adds the vocabulary and context
PromptTexts = Annotated[
    list[str],
    WithJsonSchema({"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1}),
]
PromptIdLists = Annotated[
    list[list[JsonInt]], WithJsonSchema({"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": 1})
]

# `stream_options` needs `stream: true` (OpenAI's rule too).
_STREAM_OPTIONS_RULE: dict[str, Any] = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}
# A `suffix` (FIM) needs a text prompt: token ids cannot be put around the FIM tokens.
_SUFFIX_RULE: dict[str, Any] = {
    "if": {"required": ["prompt"], "properties": {"prompt": {"type": "array", "items": {"not": {"type": "string"}}}}},
    "then": {"properties": {"suffix": {"type": "null"}}},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_STREAM_OPTIONS_RULE)

    model: str | None = None
    max_tokens: MaxTokens0 | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None  # extension
    repetition_penalty: RepetitionPenalty | None = None  # extension
    ignore_eos: bool = False  # extension
    speculate: Speculate | None = None  # extension: draft tokens per step (null: the route's default)
    stop: StopText | StopList | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[JsonInt | None, _neutral(1)] = None
    frequency_penalty: Annotated[float | None, _neutral(0)] = None
    presence_penalty: Annotated[float | None, _neutral(0)] = None
    logit_bias: Annotated[
        dict[str, float] | None, WithJsonSchema({"anyOf": [{"type": "object", "maxProperties": 0}, {"type": "null"}]})
    ] = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(_Common):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"allOf": [_STREAM_OPTIONS_RULE, _SUFFIX_RULE]}
    )

    prompt: PromptText | PromptIds | PromptTexts | PromptIdLists
    suffix: str | None = None
    echo: Annotated[bool, WithJsonSchema({"const": False})] = False
    best_of: Annotated[JsonInt | None, _neutral(1)] = None
    logprobs: Annotated[JsonInt | None, WithJsonSchema({"type": "null"})] = None


class ContentPart(_Strict):
    """A content part; non-text parts (image_url, input_audio, ...) are refused by type, with a clear
    message, rather than as unknown fields (so the document names only text parts)."""

    model_config = ConfigDict(
        extra="allow", strict=True, json_schema_extra={"required": ["type", "text"], "additionalProperties": False}
    )
    type: Annotated[str, WithJsonSchema({"const": "text"})]
    text: Annotated[str | None, WithJsonSchema({"type": "string"})] = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[Any] | None, _EMPTY_OR_NULL] = None
    tool_call_id: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxTokens1 | None = None
    max_completion_tokens: MaxTokens1 | None = None
    logprobs: Annotated[bool | None, _neutral(False)] = None
    top_logprobs: Annotated[JsonInt | None, _neutral(0)] = None
    tools: Annotated[list[Any] | None, _EMPTY_OR_NULL] = None
    tool_choice: Annotated[str | dict[str, Any] | None, _neutral("none", "auto")] = None
    parallel_tool_calls: bool | None = None
    response_format: Annotated[
        dict[str, Any] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "properties": {"type": {"const": "text"}},
                        "required": ["type"],
                        "additionalProperties": False,
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None


# -- responses (documentation only: the handlers build plain dicts, these models describe them) ----


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Doc):
    """Every error, OpenAI's shape."""

    error: ErrorDetail


class ModelCard(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int
    fim: str | None
    quantization: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[ModelCard]


class CachedTokens(_Doc):
    cached_tokens: int = Field(ge=0)


class Speculation(_Doc):
    """A Demi extension: what speculative decoding from the prompt did in this run."""

    k: int = Field(ge=1, description="draft tokens per step (the engine's cap on the requested depth)")
    drafted: int = Field(ge=0, description="draft tokens checked")
    accepted: int = Field(ge=0, description="draft tokens accepted")
    acceptance: float = Field(ge=0, le=1, description="accepted / drafted, 0 when nothing was drafted")
    steps: int = Field(ge=0, description="decode passes")


class Usage(_Doc):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    prompt_tokens_details: CachedTokens
    speculation: Speculation | None = Field(
        default=None,
        description="Demi extension: speculative decoding's figures; absent when the run did not speculate",
    )


class CompletionChoice(_Doc):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"]


class CompletionResponse(_Doc):
    """A whole /v1/completions answer (`stream: true` answers with text/event-stream instead)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(_Doc):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Doc):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]


class ChatResponse(_Doc):
    """A whole /v1/chat/completions answer (`stream: true` answers with text/event-stream instead)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChoice]
    usage: Usage


class CompletionChunkChoice(_Doc):
    text: str
    index: int
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class CompletionChunk(_Doc):
    """One event of a /v1/completions stream; with `stream_options.include_usage` every chunk has
    `usage` (null until the last, whose `choices` is empty)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice] = Field(max_length=1)
    usage: Usage | None = None


class ChatDelta(_Doc):
    role: Literal["assistant"] = "assistant"  # only in the first chunk
    content: str = ""


class ChatChunkChoice(_Doc):
    index: int
    delta: ChatDelta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class ChatChunk(_Doc):
    """One event of a /v1/chat/completions stream (`usage` as in CompletionChunk)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice] = Field(max_length=1)
    usage: Usage | None = None


STREAM_MODELS = (CompletionChunk, ChatChunk)


def sse_schema(chunk: type[BaseModel]) -> dict[str, Any]:
    """One Server-Sent Event of a generation stream: a JSON `chunk`, an error (the generation failed after
    the stream began) or the closing `[DONE]`. OpenAPI 3.1 has a text/event-stream `schema` describe each
    event; `contentSchema` describes the JSON inside `data`."""
    payload = {
        "anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"}, {"$ref": "#/components/schemas/ErrorResponse"}]
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"const": "message"},
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "pattern": "^\\{",
                        "contentMediaType": "application/json",
                        "contentSchema": payload,
                    },
                ]
            },
        },
    }


class Health(_Doc):
    status: Literal["ok"]
    model: str


class JobSummary(_Doc):
    id: int
    kind: str
    state: Literal["queued", "active", "done", "cancelled", "dropped", "error"]
    steps: int
    max_tokens: int
    prompt_tokens: int
    completion_tokens: int | None
    finish_reason: str | None
    queued_ms: float
    total_ms: float


class Stats(_Doc):
    """The model runner's counters (`demi.assistant.runner.ModelRunner.stats`)."""

    model: str
    context: int
    active: int
    queued: int
    max_active: int
    max_queue: int
    engine_capacity: int
    submitted: int
    completed: int
    cancelled: int
    dropped: int
    errors: int
    completion_tokens: int
    prompt_tokens: int
    cached_tokens: int
    shifted_tokens: int = Field(default=0, description="prompt tokens reused from a shifted KV run (cache_shift)")
    batch_steps: int = Field(default=0, description="continuous batching: batched decode passes")
    batched_tokens: int = Field(default=0, description="continuous batching: decode steps those passes held")
    active_jobs: list[JobSummary]
    recent: list[JobSummary]


class KeyUsageEntry(_Doc):
    """One key's generation usage since the server started (`demi.serve.metrics`)."""

    key: str = Field(description="the key's name (`default` for --api-key, `local` on a server without keys)")
    role: Literal["user", "admin", "metrics"]
    active: bool = Field(description="false once the key is revoked (its usage stays until the server restarts)")
    requests: int = Field(ge=0, description="generation requests (POST /v1/completions, /v1/chat/completions)")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    errors: int = Field(ge=0, description="generation requests answered with an error")
    last_request: float | None = Field(description="Unix time of the last generation request")


class UsageReport(_Doc):
    """Usage per key: a `user` key sees its own entry, an `admin` key (and a server without keys) every key's."""

    object: Literal["usage"]
    since: float = Field(description="Unix time the counts start from (the server's start)")
    keys: list[KeyUsageEntry]


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Responses of the generation routes besides the guard's (see `document`).
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _err(
        "Invalid request: bad JSON, unknown or unsupported parameter, wrong type, value out of range, "
        "or a prompt that does not fit the context (code `context_length_exceeded`)"
    ),
    429: _err("Too many requests are waiting for a generation slot (code `queue_full`)"),
    503: _err("The server is shutting down (code `server_busy`)"),
}


def document(
    schema: dict[str, Any],
    *,
    context: int,
    vocab_size: int,
    fim: bool,
    api_key: bool,
    host_check: bool,
    roles: bool = False,
) -> dict[str, Any]:
    """A copy of the app's OpenAPI document, made exact for this model and these guards.

    Adds the model's bounds (a prompt has at least one token, so at most `context - 1` are left for
    `max_tokens`; token ids index the vocabulary) and what FIM allows: with FIM tokens, an empty prompt
    is fine beside a `suffix` (the cursor at the start of a file); without them, only an empty `suffix`
    is (code `fim_not_supported`). Replaces FastAPI's 422 (validation errors are 400s here), and
    declares what the guard in front of every route answers: 401 with `api_key` (and a bearer security
    scheme), 403 with `host_check` (a Host header that is not a loopback name) or with `roles` (a keys
    file: a key whose role does not allow the route, code `permission_denied`), 408 (body too slow),
    413 (body too large) and, on POST, 415 (not JSON).
    """
    schema = copy.deepcopy(schema)
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in STREAM_MODELS:  # referenced only from the text/event-stream schemas
        one = model.model_json_schema(ref_template="#/components/schemas/{model}")
        comps.update(one.pop("$defs", {}))
        comps[model.__name__] = one
    for name in ("HTTPValidationError", "ValidationError"):
        comps.pop(name, None)
    for name in ("CompletionRequest", "ChatRequest"):
        props = comps[name]["properties"]
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                props[field]["anyOf"][0]["maximum"] = context - 1
    completion = comps["CompletionRequest"]
    for branch in completion["properties"]["prompt"]["anyOf"]:
        inner = branch.get("items", {})  # token ids: [1, 2] or [[1, 2]]
        ids = branch if inner.get("type") == "integer" else inner if inner.get("type") == "array" else None
        if ids is not None:
            ids["items"]["maximum"] = vocab_size - 1
            ids["maxItems"] = context - 1
        text = branch if branch.get("type") == "string" else inner if inner.get("type") == "string" else None
        if text is not None and fim:
            text["minLength"] = 0
    if fim:  # an empty prompt needs a suffix
        non_empty = {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
                {"type": "array", "items": {"type": ["integer", "array"]}},
            ]
        }
        completion["allOf"].append(
            {
                "anyOf": [
                    {"required": ["suffix"], "properties": {"suffix": {"type": "string"}}},
                    {"required": ["prompt"], "properties": {"prompt": non_empty}},
                ]
            }
        )
    else:
        completion["properties"]["suffix"] = {
            "anyOf": [{"type": "string", "maxLength": 0}, {"type": "null"}],
            "title": "Suffix",
        }
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    if api_key:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    for ops in schema.get("paths", {}).values():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            guard = {
                "408": "The request body did not arrive in time (code `request_timeout`)",
                "413": "The request body is larger than the limit (code `request_too_large`)",
            }
            if api_key:
                guard["401"] = "Missing or wrong API key (code `invalid_api_key`)"
            if host_check:
                guard["403"] = "The Host header is not a loopback name (code `forbidden_host`)"
            elif roles:
                guard["403"] = "The key's role does not allow this route (code `permission_denied`)"
            if method == "post":
                guard["415"] = "The body is not JSON (code `unsupported_media_type`)"
            for status, text in guard.items():
                responses.setdefault(status, {"description": text, "content": ref})
    return schema


def bad_unicode(value: Any, path: str = "") -> str | None:
    """The path of the first string in a parsed body that is not valid Unicode, else None. JSON's
    `\\ud800` escapes can carry lone UTF-16 surrogates, which Python keeps in a str but no tokenizer (or
    UTF-8 encoder) accepts. A bad key is reported at its parent's path, so the path itself is clean."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and bad_unicode(key) is not None:
            return path or "body"
        bad = bad_unicode(item, f"{path}.{key}" if path else str(key))
        if bad is not None:
            return bad
    return None


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """The first pydantic/FastAPI validation error as one OpenAI-style 400."""
    if not errors:
        return ApiError(400, "invalid request body", code="invalid_body")
    err = errors[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    kind = str(err.get("type", ""))
    # Union members show up in the location ("prompt", "list[int]", 1): keep only the real path.
    path = [x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int", "float", "bool")]
    param = ".".join(path) or None
    if kind == "json_invalid":
        return ApiError(
            400,
            f"We could not parse the JSON body of your request: {err.get('ctx', {}).get('error', 'invalid JSON')}",
            code="invalid_json",
        )
    if kind == "string_unicode":
        return ApiError(
            400,
            f"'{param or 'body'}' is not valid Unicode: it has a lone UTF-16 surrogate",
            param=param,
            code="invalid_value",
        )
    if param is None or (kind in ("model_attributes_type", "dict_type", "model_type") and len(path) == 0):
        if kind == "missing":
            return ApiError(400, "the request body is missing", code="invalid_body")
        return ApiError(400, "the request body must be a JSON object", code="invalid_body")
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_parameter")
    if kind in ("too_short", "too_long"):
        return ApiError(400, f"'{param}': {err.get('msg', 'wrong length')}", param=param, code="invalid_value")
    if kind in ("literal_error", "enum"):
        return ApiError(400, f"Invalid value for '{param}': {err.get('msg')}", param=param, code="invalid_value")
    return ApiError(
        400, f"Invalid type for '{param}': {err.get('msg', 'wrong type')}", param=param, code="invalid_type"
    )


def unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="unsupported_parameter")


def invalid(param: str | None, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")
