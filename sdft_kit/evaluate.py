"""Evaluation: score a model's answers to held-out questions.

Scorers are small pure functions `(output_text, item) -> bool`, one per answer format:
    extract  the text inside <answer>...</answer> (or a regex of your own) equals the answer;
    tool     the first `Action:` and its `Action Input:` JSON equal the gold call (the paper's tool-use score);
    fact     a normalised accepted answer occurs in the normalised output (knowledge questions).
Multiple-choice items (`choice`) are scored without generating: the option with the highest
mean per-token log-prob after the prompt is the model's pick (robust for small models).
`evaluate` runs greedy batched generation for the rest, with a progress bar.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .batch import mean_logprobs
from .generation import generate_text
from .demos import render
from .text import normalize, option_letter

KINDS = ("fact", "tool", "extract", "choice")
ANSWER_PATTERN = r"<answer>\s*(.*?)\s*</answer>"


@dataclass
class EvalItem:
    """One held-out question and what counts as a right answer.

    answers: accepted answers. fact: any may occur in the output; extract: the text (or the letter)
             inside the answer tag; tool: the gold `Action: ...\\nAction Input: {...}`; choice: the
             right option (one of `choices`).
    """

    messages: tuple[dict, ...]  # the query, as chat messages ending with a user turn
    answers: list[str]
    kind: str = "fact"
    choices: list[str] | None = None  # the options of a `choice` item, scored by log-likelihood
    source: str = ""  # where it came from, e.g. "knowledge_eval.jsonl:3"
    group: str = ""  # a label to report accuracy by, e.g. "direct" / "indirect"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not self.answers:
            raise ValueError(f"{self.source or 'item'}: needs at least one accepted answer")
        if self.kind == "choice" and (not self.choices or self.answers[0] not in self.choices):
            raise ValueError(f"{self.source or 'item'}: a choice item needs `choices` containing answers[0]")

    @property
    def prompt(self) -> str:
        """Content of the last user message."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def fact_match(output: str, item: EvalItem) -> bool:
    """Any accepted answer occurs, as whole words, in the output (both normalised)."""
    padded = f" {normalize(output)} "
    return any(normalize(answer) and f" {normalize(answer)} " in padded for answer in item.answers)


def extracted_answer_match(output: str, item: EvalItem, pattern: str = ANSWER_PATTERN) -> bool:
    """The text captured by `pattern` (group 1) equals an accepted answer.

    A single-letter answer ("B") is compared as a letter: "b", "(B)" and "B) Paris" all count.
    Other answers compare normalised. No match is wrong, and so are several tags that
    disagree (a hedge); repeated tags with the same answer count once.
    """
    found = re.findall(pattern, output, flags=re.DOTALL | re.IGNORECASE)
    if not found:
        return False
    found = [group[0] if isinstance(group, tuple) else group for group in found]
    for answer in item.answers:
        if len(answer.strip()) == 1 and answer.strip().isalpha():
            letters = {option_letter(text.strip()) for text in found}
            if letters == {answer.strip().upper()}:
                return True
        elif {normalize(text) for text in found} == {normalize(answer)}:
            return True
    return False


def parse_tool_call(text: str) -> tuple[str, object] | None:
    """(action, parsed input) of the first `Action:` line and the `Action Input:` after it, or None.

    The input is the first JSON value after `Action Input:`; text after it is ignored
    (models often add an `Observation:` line). Anything else malformed gives None.
    """
    action = re.search(r"^[ \t]*Action:[ \t]*(.*)$", text, flags=re.MULTILINE)
    if action is None or not action[1].strip():
        return None
    rest = text[action.end():]
    given = re.search(r"^[ \t]*Action Input:", rest, flags=re.MULTILINE)
    if given is None:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(rest[given.end():].lstrip())
    except json.JSONDecodeError:
        return None
    return action[1].strip(), value


def tool_call_match(output: str, item: EvalItem) -> bool:
    """The first `Action:` equals the gold action exactly (after strip) and `Action Input:` is equal JSON."""
    call = parse_tool_call(output)
    return call is not None and any(call == parse_tool_call(answer) for answer in item.answers)


def score_output(output: str, item: EvalItem) -> bool:
    """The scorer of the item's kind applied to a generated answer."""
    if item.kind == "fact":
        return fact_match(output, item)
    if item.kind == "tool":
        return tool_call_match(output, item)
    if item.kind == "extract":
        return extracted_answer_match(output, item)
    raise ValueError("choice items are scored by log-likelihood: use choice_loglik or evaluate")


def choice_loglik(model, tokenizer, items: list[EvalItem], batch_size: int = 8) -> list[list[float]]:
    """Each option's mean per-token log-prob as the assistant's answer to the item's prompt.

    The mean (not the sum) so that long options are not penalised for their length; the
    end-of-answer token is left out. The model's pick is the option with the highest score
    (`pick_choices`). Returns one list per item.
    """
    pairs = [(render(tokenizer, item.messages), option) for item in items for option in item.choices or []]
    scores = mean_logprobs(model, tokenizer, [p for p, _ in pairs], [o for _, o in pairs], with_eos=False,
                           batch_size=batch_size)
    out, position = [], 0
    for item in items:
        n = len(item.choices or [])
        out.append(scores[position:position + n])
        position += n
    return out


def pick_choices(items: list[EvalItem], scores: list[list[float]]) -> list[str]:
    """The option with the highest score for each item."""
    return [item.choices[max(range(len(s)), key=s.__getitem__)] for item, s in zip(items, scores)]


@dataclass
class EvalResult:
    """Accuracy and per-item details of one evaluation; `to_dict()` is JSON-serialisable."""

    items: list[EvalItem]
    outputs: list[str]  # generated answers; the picked option for choice items
    correct: list[bool]
    seconds: float = 0.0
    choice_scores: dict[int, list[float]] = field(default_factory=dict)  # item index -> option scores

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    def accuracy_by(self, key: str = "kind") -> dict[str, float]:
        """Accuracy per value of an item field: 'kind', 'group' or 'source'."""
        if key not in ("kind", "group", "source"):
            raise ValueError(f"key must be 'kind', 'group' or 'source'; got {key!r}")
        groups: dict[str, list[bool]] = {}
        for item, ok in zip(self.items, self.correct):
            value = item.kind if key == "kind" else item.group if key == "group" else item.source
            groups.setdefault(value, []).append(ok)
        return {name: sum(oks) / len(oks) for name, oks in groups.items()}

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "n": len(self.items),
            "n_correct": sum(self.correct),
            "accuracy_by_kind": self.accuracy_by("kind"),
            "accuracy_by_group": self.accuracy_by("group"),
            "seconds": round(self.seconds, 2),
            "items": [
                {"prompt": item.prompt, "kind": item.kind, "group": item.group, "source": item.source,
                 "answers": list(item.answers),
                 "output": output, "correct": ok,
                 **({"choices": list(item.choices), "choice_scores": self.choice_scores[i]} if i in self.choice_scores
                    else {})}
                for i, (item, output, ok) in enumerate(zip(self.items, self.outputs, self.correct))
            ],
        }


def evaluate(model, tokenizer, items: list[EvalItem], *, max_new_tokens: int = 64, batch_size: int = 8,
             progress: bool = True, generate: Callable[..., list[str]] = generate_text) -> EvalResult:
    """Score the model on the items: greedy generation for fact/tool/extract, log-likelihood for choice.

    Prompts are batched by rendered length (less padding); results keep the items' order. `generate(model,
    tokenizer, prompts, max_new_tokens)` writes the answers (the forgetting monitor passes one that leaves the
    weights bit for bit as they were).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    outputs: list[str] = [""] * len(items)
    correct: list[bool] = [False] * len(items)
    choice_scores: dict[int, list[float]] = {}
    bar = tqdm(total=len(items), desc="evaluate", unit="item", disable=not progress)
    try:
        choice = [i for i, item in enumerate(items) if item.kind == "choice"]
        for first in range(0, len(choice), batch_size):
            rows = choice[first:first + batch_size]
            batch_items = [items[i] for i in rows]
            scores = choice_loglik(model, tokenizer, batch_items, batch_size=batch_size * 4)
            for i, item, s, picked in zip(rows, batch_items, scores, pick_choices(batch_items, scores)):
                outputs[i], correct[i], choice_scores[i] = picked, picked == item.answers[0], s
            bar.update(len(rows))
        prompts = {i: render(tokenizer, item.messages) for i, item in enumerate(items) if item.kind != "choice"}
        order = sorted(prompts, key=lambda i: len(prompts[i]))
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            texts = generate(model, tokenizer, [prompts[i] for i in rows], max_new_tokens)
            for i, text in zip(rows, texts):
                outputs[i], correct[i] = text, score_output(text, items[i])
            bar.update(len(rows))
    finally:
        bar.close()
    return EvalResult(list(items), outputs, correct, time.perf_counter() - start, choice_scores)
