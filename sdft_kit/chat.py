"""Answers from a model, for people: greedy (or sampled) text for chat-rendered prompts or messages.

Evaluation, the teacher check, the demo and the app all read answers through these two.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .config import RolloutConfig
from .demos import render
from .rollout import rollout


def generate_text(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 64,
                  *, do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Answers to chat-rendered prompts (greedy by default), as text."""
    config = RolloutConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    return rollout(model, tokenizer, prompts, config, do_sample=do_sample).texts(tokenizer)


def chat(model, tokenizer: PreTrainedTokenizerBase, message: str | list[dict], max_new_tokens: int = 96,
         *, system: str | None = None, temperature: float = 0.0) -> str:
    """The model's answer to one user message (or a list of chat messages); greedy unless temperature > 0."""
    messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return generate_text(model, tokenizer, [render(tokenizer, messages)], max_new_tokens, do_sample=temperature > 0,
                         temperature=temperature or 1.0)[0]
