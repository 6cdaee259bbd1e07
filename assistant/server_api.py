"""Request bodies and errors of `demi serve`'s OpenAI-compatible API.

Validation is strict and every failure is a 400 in OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}` (never FastAPI's 422 `detail` list):

- malformed JSON or a body that is not a JSON object: 400, code `invalid_json` / `invalid_body`;
- an unknown field: 400, code `unknown_parameter` (as OpenAI does: a typo such as `max_token` must not
  be silently ignored). OpenAI fields we cannot honour are accepted only at their neutral value
  (`n: 1`, `echo: false`, `logprobs: null`, `frequency_penalty: 0`, `tools: []`, ...) and rejected
  otherwise with code `unsupported_parameter`; `user`, `metadata`, `store`, `service_tier` are ignored;
- a wrong type: 400, code `invalid_type` (no coercion: `"max_tokens": "16"` or `true` is an error);
- a value out of range: 400, code `invalid_value`; a prompt that does not fit: 400,
  code `context_length_exceeded`.

Extensions over OpenAI: `top_k`, `repetition_penalty` (Hugging Face style, multiplicative; OpenAI's
additive `frequency_penalty`/`presence_penalty` are not the same thing and are rejected unless 0) and
`ignore_eos` (generate exactly `max_tokens`, for benchmarks).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 16
MAX_STOP_LEN = 512


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension
    repetition_penalty: float | None = None  # extension
    ignore_eos: bool = False  # extension
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None


class CompletionRequest(_Common):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    suffix: str | None = None
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None


class ContentPart(_Strict):
    """A content part; non-text parts (image_url, input_audio, ...) are refused by type, with a clear
    message, rather than as unknown fields."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


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
        return ApiError(400, "We could not parse the JSON body of your request: "
                        f"{err.get('ctx', {}).get('error', 'invalid JSON')}", code="invalid_json")
    if param is None or (kind in ("model_attributes_type", "dict_type", "model_type") and len(path) == 0):
        if kind == "missing":
            return ApiError(400, "the request body is missing", code="invalid_body")
        return ApiError(400, "the request body must be a JSON object", code="invalid_body")
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_parameter")
    if kind in ("too_short", "too_long"):
        return ApiError(400, f"'{param}': {err.get('msg', 'wrong length')}", param=param,
                        code="invalid_value")
    if kind in ("literal_error", "enum"):
        return ApiError(400, f"Invalid value for '{param}': {err.get('msg')}", param=param,
                        code="invalid_value")
    return ApiError(400, f"Invalid type for '{param}': {err.get('msg', 'wrong type')}", param=param,
                    code="invalid_type")


def unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="unsupported_parameter")


def invalid(param: str | None, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")
