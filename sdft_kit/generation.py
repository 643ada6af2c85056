"""Answers from a model, for people: greedy (or sampled) text for chat-rendered prompts or conversations.

    generate_text(model, tokenizer, prompts)     answers to chat-rendered prompts, batched (evaluation, the check)
    chat(model, tokenizer, message)              the answer to one message or a conversation, as text
    stream_chat(model, tokenizer, messages)      the same answer as it grows (transformers' TextIteratorStreamer)

Evaluation, the teacher check, the demo, the CLI's `generate` and the app read answers through these.
`chat` and `stream_chat` also take a repetition penalty and stop strings (the answer ends before
the first one), so a small model that loops ("El Salvador, el Salvador, ...") can be reined in.
A prompt that, with room for the answer, does not fit the model's context is refused (TooLong, one
line) before anything is generated: past its context a model answers garbage, slowly, in a lot of memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from .batch import eos_ids
from .config import RolloutConfig
from .demos import render
from .models import context_length, eval_mode
from .rollout import rollout


class TooLong(ValueError):
    """A prompt that, with the room asked for its answer, does not fit the model's context."""


def require_fit(model, tokens: int, room: int, what: str) -> None:
    """TooLong, naming `what` and the limit, unless `tokens` plus `room` for the answer fit the model's context
    (models that name no context length are not checked)."""
    context = context_length(model.config)
    if context and tokens + room > context:
        raise TooLong(f"{what} is {tokens} tokens; with {room} for the answer that is more than the model's context "
                      f"of {context} tokens. Shorten it" + (", or ask for fewer new tokens" if tokens < context else ""))


def prompt_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """The length in tokens of a chat-rendered prompt (the template wrote its special tokens)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate_text(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 64,
                  *, do_sample: bool = False, temperature: float = 1.0, names: Sequence[str] | None = None) -> list[str]:
    """Answers to chat-rendered prompts (greedy by default), as text. A prompt that leaves no room for
    `max_new_tokens` in the context is refused first (TooLong), named by `names` (default: its position)."""
    for i, prompt in enumerate(prompts):
        what = names[i] if names is not None else f"prompt {i + 1} of {len(prompts)}"
        require_fit(model, prompt_tokens(tokenizer, prompt), max_new_tokens, what)
    config = RolloutConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    return rollout(model, tokenizer, prompts, config, do_sample=do_sample).texts(tokenizer)


def conversation(message: str | Sequence[dict], system: str | None = None) -> list[dict]:
    """Chat messages from one user message or a list of messages, with an optional system message first."""
    messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
    return [{"role": "system", "content": system}, *messages] if system else messages


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the first stop string in it (all of it when none occurs)."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[:min(ends)] if ends else text


def settled(text: str, stop: Sequence[str]) -> str:
    """The text without a tail that may yet become a stop string (its first characters): what can be shown now."""
    held = max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)
    return text[:len(text) - held]


class _Cancelled(StoppingCriteria):
    """Ends generation once `event` is set: the reader of a stream went away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.event.is_set()


def stream_chat(model, tokenizer: PreTrainedTokenizerBase, message: str | Sequence[dict], max_new_tokens: int = 96,
                *, system: str | None = None, temperature: float = 0.0, top_p: float = 1.0,
                repetition_penalty: float = 1.0, stop: Sequence[str] = ()) -> Iterator[str]:
    """The model's answer to a message or conversation, yielded as the text so far after each new piece
    (each yield extends the one before, so a terminal can print the difference).

    Greedy unless temperature > 0 (then nucleus sampling with `top_p`). `repetition_penalty` > 1
    discourages tokens already in the context (1 = off). Generation ends at an end token, after
    `max_new_tokens`, or at the first of the `stop` strings, which is left out of the answer.
    Generation runs in a thread; closing the iterator early stops it after the current token.
    A conversation that leaves no room for `max_new_tokens` in the context raises TooLong at the first
    `next()`, before anything is generated.
    """
    if temperature < 0 or not 0 < top_p <= 1 or repetition_penalty <= 0 or max_new_tokens < 1:
        raise ValueError("temperature must be >= 0, top_p in (0, 1], repetition_penalty > 0 and max_new_tokens >= 1; "
                         f"got {temperature}, {top_p}, {repetition_penalty}, {max_new_tokens}")
    stop = [s for s in stop if s]
    device = next(model.parameters()).device
    inputs = tokenizer(render(tokenizer, conversation(message, system)), return_tensors="pt",
                       add_special_tokens=False).to(device)
    require_fit(model, inputs["input_ids"].shape[1], max_new_tokens,
                "the message" if isinstance(message, str) else "the conversation")
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else \
        {"do_sample": False}
    stopping = {"stop_strings": stop, "tokenizer": tokenizer} if stop else {}
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad(), eval_mode(model):
                model.generate(**inputs, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                               eos_token_id=eos_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
                               streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]),
                               **sampling, **stopping)
        except BaseException as err:  # re-raised in the reader's thread, below
            failure.append(err)
            streamer.end()

    worker = threading.Thread(target=generate, name="sdft-kit-chat", daemon=True)
    worker.start()
    text = shown = ""
    try:
        for piece in streamer:
            text += piece
            answer = cut_at_stop(text, stop)
            if answer != text:  # a stop string: the answer ends before it
                yield answer
                return
            if len(settled(text, stop)) > len(shown):  # what is shown only ever grows
                shown = settled(text, stop)
                yield shown
        if text != shown:
            yield text
    finally:
        cancelled.set()
        worker.join()
    if failure:
        raise failure[0]


def chat(model, tokenizer: PreTrainedTokenizerBase, message: str | Sequence[dict], max_new_tokens: int = 96,
         *, system: str | None = None, temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
         stop: Sequence[str] = ()) -> str:
    """The model's answer to one user message (or a list of chat messages); greedy unless temperature > 0.

    The settings are `stream_chat`'s; this returns the whole answer at once."""
    answer = ""
    for answer in stream_chat(model, tokenizer, message, max_new_tokens, system=system, temperature=temperature,
                              top_p=top_p, repetition_penalty=repetition_penalty, stop=stop):
        pass
    return answer
