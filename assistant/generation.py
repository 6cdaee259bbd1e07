"""From a task's prompt to what the model runs: the one place that builds model prompts.

`build_fim` is the FIM prompt (the family's template from `fim.py`, token healing of the prefix's
last token, the template's stop strings and tokens); `build_chat` the chat prompt (the tokenizer's
chat template ending on `END_OF_TURN`, or a base model's completion-style text and its stops);
`transcript_prompt` the plain fallback for a client's own chat messages. The in-process engine
(`engines.InProcessEngine`) and `demi serve` both use them, so an editor and an OpenAI client get
the same prompt for the same request; the HTTP client (`engines.HttpEngine`) builds FIM prompts
with `build_fim` too when it knows the remote model's family (text with the template's token
strings, no tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from demi.assistant.fim import FimTemplate
from demi.assistant.prompts import ChatPrompt, render_chat

__all__ = [
    "END_OF_TURN",
    "PLAIN_CHAT_STOPS",
    "ModelPrompt",
    "build_chat",
    "build_fim",
    "end_of_turn_ids",
    "transcript_prompt",
]

# End-of-turn tokens of common chat formats: a chat answer stops on whichever the vocabulary has.
END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|EOT|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "</s>",
    "<｜end▁of▁sentence｜>",
)
# A plain `role: content` transcript ends where the model starts the next turn itself.
PLAIN_CHAT_STOPS = ("\nuser:", "\nsystem:")


@dataclass
class ModelPrompt:
    """A prompt ready for the model, with what ends its answer besides the model's end-of-sequence
    tokens (the caller adds those, unless it wants them ignored)."""

    prompt: str | list[int]  # text (encoded by the engine, special tokens added) or token ids
    stop: list[str] = field(default_factory=list)  # stop strings the vocabulary has no token for
    stop_ids: set[int] = field(default_factory=set)  # stop tokens of the template
    heal: str = ""  # text cut off the prompt for token healing (the answer starts by spelling it)
    templated: bool = False  # FIM: built by a template; chat: the tokenizer's chat template was used


def build_fim(
    tokenizer: Any | None,
    template: FimTemplate | None,
    prefix: str,
    suffix: str,
    path: str | None = None,
    other_files: Iterable[tuple[str, str]] = (),
    heal: bool = True,
) -> ModelPrompt:
    """The prompt to fill `prefix`<cursor>`suffix`. With `heal`, the prefix's last token is cut off
    and the answer constrained to spell it first (token healing). Without a template: the prefix
    alone, continued (a newline when it is empty). Without a tokenizer (a client whose server
    encodes the text): no healing, and every stop of the template as a string."""
    from demi.model.healing import split_heal  # the tokenizer's own view of the last token

    cut = ""
    if heal and tokenizer is not None:
        prefix, cut = split_heal(prefix, tokenizer)
    if template is None:
        return ModelPrompt(prefix or "\n", heal=cut)
    text = template.build(prefix, suffix, path=path, other_files=other_files)
    if tokenizer is None:
        return ModelPrompt(text, list(template.stop_strings), set(), templated=True)
    stops = [s for s in template.stop_strings if tokenizer.token_to_id(s) is None]
    return ModelPrompt(text, stops, set(template.stop_token_ids), cut, templated=True)


def end_of_turn_ids(tokenizer: Any) -> set[int]:
    """The ids of the `END_OF_TURN` tokens this vocabulary has."""
    ids = (tokenizer.token_to_id(t) for t in END_OF_TURN)
    return {i for i in ids if i is not None}


def build_chat(tokenizer: Any, prompt: ChatPrompt) -> ModelPrompt:
    """Token ids of the chat prompt: the tokenizer's chat template (which writes BOS itself), ending
    on an end-of-turn token; for a base model without one, the prompt's completion-style text."""
    text, templated = render_chat(tokenizer, prompt)
    if templated:
        ids = tokenizer.encode(text, add_special_tokens=False)
        return ModelPrompt(list(ids), [], end_of_turn_ids(tokenizer), templated=True)
    return ModelPrompt(list(tokenizer.encode(text)), list(prompt.plain_stops))


def transcript_prompt(messages: Sequence[dict[str, Any]]) -> ChatPrompt:
    """A client's chat messages as a `ChatPrompt`; for a base model the plain fallback is a
    `role: content` transcript the model continues after "assistant:"."""
    plain = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return ChatPrompt([dict(m) for m in messages], plain, list(PLAIN_CHAT_STOPS))
