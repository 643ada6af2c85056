"""Record formats: what one training record looks like, and how it becomes a chat query and a demonstration.

    detect_format(record)        the first format in FORMATS whose fields the record has (or a DataError naming
                                 the fields found and how to map them with --columns)
    parse_columns("prompt=q,demonstration=a")   --columns as {target: the user's column}
    map_columns(record, columns, where)         the record with the user's columns renamed to the targets
    describe(examples, columns)  "Alpaca, 52 records; columns instruction+input -> prompt, output -> demonstration"

Each format converts a record into (messages, demonstration): the messages end with the user turn the
demonstration answers; earlier turns (a system message, earlier user and assistant turns) stay in the query.
A bad field raises DataError naming `where` (file and line or record), the field, and what to do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "system": "system"}
ANSWER_FIELDS = ("demonstration", "privileged_context", "completion")  # first present wins
COLUMN_TARGETS = ("prompt", "demonstration", "system", "messages")
SHAPES = ("accepted fields: prompt + demonstration (or privileged_context / completion), messages (OpenAI), "
          "conversations (ShareGPT), instruction + output (Alpaca), prompt + golden_response or messages + "
          "output_text (the SDFT paper's files)")
_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
          str: "a string", list: "a list", tuple: "a list", dict: "an object"}

Messages = tuple[dict, ...]


class DataError(ValueError):
    """Bad training data. The message names the file, the line or record (when there is one) and the field,
    and says what to do."""


def kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def text(value: Any, where: str, field: str) -> str:
    """A non-empty string field, kept as it is (not stripped)."""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {kind(value)}.")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty. Fill it in or remove the record.")
    return value


def _content(value: Any, where: str, field: str) -> str:
    """A message's content: a string, or OpenAI's list of text parts (joined)."""
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        value = "\n".join(part.get("text") if isinstance(part.get("text"), str) else "" for part in value)
    elif not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string (or a list of text parts), got {kind(value)}.")
    return text(value, where, field)


def chat_messages(value: Any, where: str, field: str) -> Messages:
    """A non-empty list of {role, content} messages (or ShareGPT's {from, value} turns), as {role, content}."""
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of chat messages like "
                        f'{{"role": "user", "content": "..."}}, got {kind(value)}.')
    messages = []
    for index, message in enumerate(value):
        name = f"{field}[{index}]"
        if isinstance(message, dict) and "from" in message and "value" in message:  # ShareGPT's turn
            role = SHAREGPT_ROLES.get(message["from"])
            if role is None:
                raise DataError(f"{where}: field '{name}.from' is {message['from']!r}; sdft-kit takes 'human', "
                                "'gpt' and 'system' turns (remove tool or function turns).")
            messages.append({"role": role, "content": _content(message["value"], where, f"{name}.value")})
            continue
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            got = f"fields {', '.join(map(repr, message))}" if isinstance(message, dict) else kind(message)
            raise DataError(f"{where}: field '{name}' must be an object with 'role' and 'content', got {got}.")
        role = ROLE_ALIASES.get(message["role"], message["role"])
        if role not in ROLES:
            raise DataError(f"{where}: field '{name}.role' is {message['role']!r}; use 'system', 'user' or "
                            "'assistant'.")
        # Keep only role and content: that is all the chat template and the trainer use.
        messages.append({"role": role, "content": _content(message["content"], where, f"{name}.content")})
    return tuple(messages)


def prompt_messages(value: Any, where: str, field: str = "prompt") -> Messages:
    """The query: a string (one user turn) or a list of messages ending with a user turn."""
    if isinstance(value, str):
        return ({"role": "user", "content": text(value, where, field)},)
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field '{field}' must be a string or a list of messages, got {kind(value)}.")
    messages = chat_messages(value, where, field)
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: field '{field}' must end with a user message, but the last role is "
                        f"'{messages[-1]['role']}'. Move the answer to 'demonstration'.")
    return messages


def _split_chat(messages: Messages, where: str, field: str) -> tuple[Messages, str]:
    """A whole conversation -> (every turn before the last, the last assistant turn)."""
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{field}' must end with an assistant message (the demonstration), "
                        f"but the last role is '{messages[-1]['role']}'. Append the expert answer.")
    if len(messages) < 2 or messages[-2]["role"] != "user":
        raise DataError(f"{where}: field '{field}' needs a user message (the question) right before "
                        "the final assistant message.")
    return messages[:-1], messages[-1]["content"]


# -- the formats: record -> (messages, demonstration) -------------------------------------------
def _prompt_demonstration(record: dict, where: str) -> tuple[Messages, str]:
    query = prompt_messages(record["prompt"], where)
    field = next(field for field in ANSWER_FIELDS if field in record)
    value = record[field]
    if field == "completion" and isinstance(value, (list, tuple)):
        # TRL's conversational prompt/completion format: the completion is a list of messages.
        answer = chat_messages(value, where, field)
        if answer[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'completion' must end with an assistant message, "
                            f"but the last role is '{answer[-1]['role']}'.")
        return query, answer[-1]["content"]
    return query, text(value, where, field)


def _messages(record: dict, where: str) -> tuple[Messages, str]:
    return _split_chat(chat_messages(record["messages"], where, "messages"), where, "messages")


def _sharegpt(record: dict, where: str) -> tuple[Messages, str]:
    return _split_chat(chat_messages(record["conversations"], where, "conversations"), where, "conversations")


def _alpaca(record: dict, where: str) -> tuple[Messages, str]:
    query = text(record["instruction"], where, "instruction")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise DataError(f"{where}: field 'input' must be a string (it may be empty), got {kind(extra)}.")
    if extra and extra.strip():
        query += "\n" + extra  # as LLaMA-Factory joins them
    history = record.get("history") or []
    if not isinstance(history, list) or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in history):
        raise DataError(f"{where}: field 'history' must be a list of [question, answer] pairs.")
    turns = []
    for index, (question, answer) in enumerate(history):
        turns += [{"role": "user", "content": text(question, where, f"history[{index}][0]")},
                  {"role": "assistant", "content": text(answer, where, f"history[{index}][1]")}]
    return (*turns, {"role": "user", "content": query}), text(record["output"], where, "output")


def _sdft_tooluse(record: dict, where: str) -> tuple[Messages, str]:
    response = record["golden_response"]  # a list of lines (Thought / Action / Action Input) in the paper's files
    if isinstance(response, list):
        response = "\n".join(text(line, where, f"golden_response[{i}]") for i, line in enumerate(response))
    return prompt_messages(record["prompt"], where), text(response, where, "golden_response")


def _sdft_science(record: dict, where: str) -> tuple[Messages, str]:
    return prompt_messages(record["messages"], where, "messages"), text(record["output_text"], where, "output_text")


@dataclass(frozen=True)
class Format:
    name: str  # what `sdft-kit train` prints
    label: str  # what the app and `inspect` show
    fields: tuple[str, ...]  # a record with all of these is in this format
    mapping: tuple[tuple[str, str], ...]  # (the record's fields, what they become), for people
    convert: Callable[[dict, str], tuple[Messages, str]]
    any_of: tuple[str, ...] = ()  # and at least one of these

    def matches(self, keys: Iterable[str]) -> bool:
        keys = set(keys)
        return set(self.fields) <= keys and (not self.any_of or bool(keys & set(self.any_of)))


# Order matters: the first match wins (messages + output_text is the paper's science file, not OpenAI's format).
FORMATS = (
    Format("sdft-science", "SDFT paper (science Q&A)", ("messages", "output_text"),
           (("messages", "prompt"), ("output_text", "demonstration")), _sdft_science),
    Format("messages", "OpenAI messages", ("messages",),
           (("messages before the last assistant turn", "prompt"), ("the last assistant turn", "demonstration")),
           _messages),
    Format("sdft-tooluse", "SDFT paper (tool use)", ("prompt", "golden_response"),
           (("prompt", "prompt"), ("golden_response lines", "demonstration")), _sdft_tooluse),
    Format("prompt-demonstration", "prompt + demonstration", ("prompt",),
           (("prompt", "prompt"), ("demonstration", "demonstration")), _prompt_demonstration, ANSWER_FIELDS),
    Format("alpaca", "Alpaca", ("instruction", "output"),
           (("instruction+input", "prompt"), ("output", "demonstration")), _alpaca),
    Format("sharegpt", "ShareGPT", ("conversations",),
           (("conversations before the last gpt turn", "prompt"), ("the last gpt turn", "demonstration")), _sharegpt),
)
BY_NAME = {f.name: f for f in FORMATS}


def detect_format(record: dict, where: str, columns: dict[str, str] | None = None) -> Format:
    """The record's format, or a DataError saying which field is missing or how to map the fields found."""
    found = next((f for f in FORMATS if f.matches(record)), None)
    if found is not None:
        return found
    answers = [field for field in ANSWER_FIELDS if field in record]
    if "prompt" in record:
        raise DataError(f"{where}: field 'demonstration' is missing; add the expert answer as 'demonstration' (or "
                        "'privileged_context' / 'completion'), or name its column with --columns "
                        "demonstration=COLUMN.")
    if answers:
        raise DataError(f"{where}: field 'prompt' is missing (the record has '{answers[0]}'). "
                        "Add the question as 'prompt', or name its column with --columns prompt=COLUMN.")
    if "instruction" in record:
        raise DataError(f"{where}: field 'output' is missing (an Alpaca record has instruction, input and output).")
    names = [key for key in record if key not in (columns or {})]
    found_text = ", ".join(repr(key) for key in record) or "none"
    hint = f"prompt={names[0]},demonstration={names[1]}" if len(names) >= 2 else "prompt=COLUMN,demonstration=COLUMN"
    raise DataError(f"{where}: no 'prompt' or 'messages' field (fields found: {found_text}); {SHAPES}; or name "
                    f"your columns with --columns {hint}.")


def check_columns(names: list[str], where: str, columns: dict[str, str] | None) -> None:
    """Refuse a table (CSV header, dataset) whose columns match no format, before reading its rows."""
    missing = [source for source in (columns or {}).values() if source not in names]
    if missing:
        raise DataError(f"{where} lacks {', '.join(map(repr, missing))}, named in --columns (its columns: "
                        f"{', '.join(map(repr, names))}). Fix the names in --columns.")
    mapped = map_columns(dict.fromkeys(names, ""), columns, where)
    if not any(f.matches(mapped) for f in FORMATS):
        found = ", ".join(repr(name) for name in names)
        hint = f"prompt={names[0]},demonstration={names[1]}" if len(names) >= 2 else "prompt=...,demonstration=..."
        raise DataError(f"{where} has columns {found}; needs 'prompt' and one of 'demonstration', "
                        "'privileged_context', 'completion' (or the columns of another format: messages, "
                        f"conversations, instruction + output). Rename them, or map them: --columns {hint}")


def parse_columns(spec: str | dict | None) -> dict[str, str]:
    """--columns "prompt=question,demonstration=answer" -> {"prompt": "question", "demonstration": "answer"}."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in (p.strip() for p in spec.split(",")):
            target, equals, source = (s.strip() for s in part.partition("="))
            if part and (not equals or not target or not source):
                raise ValueError(f"--columns takes TARGET=COLUMN pairs, e.g. prompt=question,demonstration=answer; "
                                 f"got {part!r}")
            if part:
                pairs.append((target, source))
    unknown = [target for target, _ in pairs if target not in COLUMN_TARGETS]
    if unknown:
        raise ValueError(f"--columns: unknown target {unknown[0]!r}; the targets are {', '.join(COLUMN_TARGETS)} "
                         "(e.g. prompt=question,demonstration=answer)")
    return dict(pairs)


def format_columns(columns: dict[str, str]) -> str:
    """The --columns value that parse_columns reads back."""
    return ",".join(f"{target}={source}" for target, source in columns.items())


def map_columns(record: dict, columns: dict[str, str] | None, where: str) -> dict:
    """The record with each mapped column under its target name (a field already named like a target is
    replaced; the mapped columns leave their old names)."""
    if not columns:
        return record
    missing = [source for source in columns.values() if source not in record]
    if missing:
        fields = ", ".join(repr(key) for key in record) or "none"
        raise DataError(f"{where}: --columns names the field '{missing[0]}', which this record lacks (fields: "
                        f"{fields}).")
    mapped = {key: value for key, value in record.items() if key not in columns and key not in columns.values()}
    mapped.update({target: record[source] for target, source in columns.items()})
    return mapped


def format_name(examples: list) -> str:
    """Short: 'alpaca', or 'prompt-demonstration 22, messages 2' for a mix."""
    counts = Counter(example.format for example in examples)
    return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{name} {n}" for name, n in counts.most_common())


def describe(examples: list, columns: dict[str, str] | None = None) -> str:
    """'Alpaca, 52 records; columns instruction+input -> prompt, output -> demonstration' (for a mix: each
    format's count); --columns renames show the user's column names."""
    counts = Counter(example.format for example in examples)
    known = [BY_NAME[name] for name in counts if name in BY_NAME]
    if len(counts) != 1 or len(known) != 1:
        return f"{len(examples)} records in several formats: " + ", ".join(
            f"{BY_NAME[name].label if name in BY_NAME else name or 'unknown'} {n}" for name, n in counts.most_common())
    renamed = {target: source for target, source in (columns or {}).items()}
    pairs = [(renamed.get(source, source), target) for source, target in known[0].mapping]
    system = f", {renamed['system']} -> system message" if "system" in renamed else ""
    return (f"{known[0].label}, {len(examples)} records; columns "
            + ", ".join(f"{source} -> {target}" for source, target in pairs) + system
            + (" (--columns)" if columns else ""))
