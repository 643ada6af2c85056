"""Bundled evaluation tasks, and a loader for the paper's science Q&A format.

    knowledge     invented facts about fictional 2025 disasters: demonstrations that state them;
                  eval = direct recall + indirect questions that need the fact and a reasoning step
    tooluse       ToolAlpaca-style calls to four invented APIs, scored by tool_call_match
    skills_probe  easy multiple choice the embedded base model gets right today (forgetting probe, no train split)

The data lives in `sdft_kit/task_data/` (JSONL, provenance in its README.md). An eval record is
`{"prompt": text or chat messages, "answers": [...], "kind": "fact"|"tool"|"extract"|"choice",
"choices": [...] (choice only), "group": "..." (optional label to report accuracy by)}`;
train records are the usual prompt + demonstration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .data import DataError, Example, example_from_record, load_examples
from .data_formats import prompt_messages as _query
from .data_sources import file_records as _file_records
from .evaluate import ANSWER_PATTERN, KINDS, EvalItem
from .text import option_letter

TASK_DATA = Path(__file__).parent / "task_data"
TASKS = ("knowledge", "tooluse", "skills_probe")
DESCRIPTIONS = {
    "knowledge": "Invented facts about fictional 2025 disasters; eval asks for direct recall and for "
                 "indirect answers that need a fact plus a reasoning step (scored by fact_match).",
    "tooluse": "ToolAlpaca-style tool calls to four invented APIs; answers are 'Action:' / 'Action Input:' "
               "JSON (scored by tool_call_match).",
    "skills_probe": "Easy multiple-choice questions the embedded base model answers right today, scored by "
                    "option log-likelihood; a drop after training measures forgetting. No train split.",
}
# The paper's science Q&A system prompt (its wording as far as the public record gives it);
# added only to records that bring no system message of their own.
SCIENCE_SYSTEM_PROMPT = (
    "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
    "Put only the letter of the correct option (A, B, C or D) inside the answer tags."
)
LETTERS = "ABCD"


@dataclass
class Task:
    name: str
    description: str
    train: list[Example]  # demonstrations to learn from
    eval: list[EvalItem]  # held-out questions; none has the text of a train prompt


def load_task(name: str) -> Task:
    """A bundled task by name (one of TASKS)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; bundled tasks: {', '.join(TASKS)}")
    train_path = TASK_DATA / f"{name}_train.jsonl"
    train = load_examples(train_path) if train_path.is_file() else []
    return Task(name, DESCRIPTIONS[name], train, load_eval_items(TASK_DATA / f"{name}_eval.jsonl"))


def load_eval_items(path: str | Path) -> list[EvalItem]:
    """Eval records from a JSONL file: prompt, answers, kind and (for choice) choices."""
    items = []
    for record, where, origin in _file_records(Path(path).expanduser()):
        if not isinstance(record, dict) or "prompt" not in record:
            raise DataError(f"{where}: expected an object with 'prompt' and 'answers'.")
        answers = record.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
            raise DataError(f"{where}: field 'answers' must be a non-empty list of strings.")
        kind = record.get("kind", "fact")
        if kind not in KINDS:
            raise DataError(f"{where}: field 'kind' is {kind!r}; use one of {', '.join(KINDS)}.")
        try:
            items.append(EvalItem(_query(record["prompt"], where), answers, kind, record.get("choices"), origin,
                                  str(record.get("group", ""))))
        except ValueError as error:
            raise DataError(f"{where}: {error}") from None
    return items


def _answer_letter(value, where: str) -> str:
    """'B', '(b)', 'B) text', '<answer>B</answer>' or an index 0-3 -> 'B'."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LETTERS):
        return LETTERS[value]
    if isinstance(value, str):
        tagged = re.search(ANSWER_PATTERN, value, flags=re.DOTALL | re.IGNORECASE)
        letter = option_letter(tagged[1] if tagged else value, LETTERS)
        if letter:
            return letter
    raise DataError(f"{where}: the answer {value!r} is not an option letter A-D (or an index 0-3).")


def _science_record(record: dict, where: str) -> tuple[tuple[dict, ...], str, str | None]:
    """(messages, answer letter, demonstration or None) of one science Q&A record."""
    demonstration = None
    if "messages" in record:  # a full chat: the assistant's answer is the demonstration
        example = example_from_record(record, where)
        messages, demonstration = example.messages, example.demonstration
    elif "prompt" in record:
        messages = _query(record["prompt"], where)
        if any(field in record for field in ("demonstration", "completion", "privileged_context")):
            demonstration = example_from_record(record, where).demonstration
    elif "question" in record:
        options = record.get("choices", record.get("options"))
        if isinstance(options, dict):
            options = [options[key] for key in sorted(options)]
        if not isinstance(options, list) or len(options) != len(LETTERS):
            raise DataError(f"{where}: field 'choices' (or 'options') must hold {len(LETTERS)} options.")
        text = record["question"] + "\n\n" + "\n".join(f"{l}. {o}" for l, o in zip(LETTERS, options))
        messages = _query(text, where)
    else:
        raise DataError(f"{where}: needs 'prompt', 'messages' or 'question' + 'choices'.")
    field = next((f for f in ("answer", "label", "gold", "correct_answer") if f in record), None)
    if field is not None:
        answer = _answer_letter(record[field], where)
    elif demonstration is not None and re.search(ANSWER_PATTERN, demonstration, flags=re.DOTALL | re.IGNORECASE):
        answer = _answer_letter(demonstration, where)
    else:
        raise DataError(f"{where}: no answer: add 'answer' (the letter, e.g. \"B\"), or end the demonstration "
                        "with <answer>B</answer>.")
    if messages[0]["role"] != "system":
        messages = ({"role": "system", "content": SCIENCE_SYSTEM_PROMPT}, *messages)
    return messages, answer, demonstration


def load_science_qa(path: str | Path, *, limit: int | None = None) -> Task:
    """The paper's science Q&A format: 4-option multiple choice, answers in <answer>X</answer> tags.

    Accepted JSONL records (answer = a letter "B", "(B)", an index 0-3, or taken from the
    demonstration's <answer> tag):
        {"prompt": text or messages, "answer": "B"}                       (+ optional demonstration/completion)
        {"messages": [system?, user, assistant]}                          (the assistant turn = demonstration)
        {"question": "...", "choices": [4 options] or {"A": ...}, "answer": "B" or 1}
    The answer field may also be named label, gold or correct_answer. A record without a
    system message gets SCIENCE_SYSTEM_PROMPT. Every record becomes an eval item (kind
    "extract", scored on the letter); records with a demonstration are also train examples.
    """
    path = Path(path).expanduser()
    train, items = [], []
    for record, where, origin in _file_records(path):
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object per line.")
        messages, answer, demonstration = _science_record(record, where)
        items.append(EvalItem(messages, [answer], "extract", None, origin))
        if demonstration is not None:
            train.append(Example(messages, demonstration, origin))
        if len(items) == limit:
            break
    return Task("science_qa", f"Science Q&A (4-option multiple choice) from {path.name}", train, items)
