"""Training data: expert demonstrations from JSON Lines, CSV, a `datasets.Dataset` or a list of dicts.

Any problem raises one `DataError` naming the file, line and field and saying what to do: no traceback hunting.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
ANSWER_FIELDS = ("demonstration", "privileged_context", "completion")  # first present wins
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
SHAPES = ("accepted fields: prompt + demonstration, prompt + privileged_context, prompt + completion, "
          "or messages (ending with the assistant's answer)")
_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
          str: "a string", list: "a list", tuple: "a list", dict: "an object"}

Records = Iterator[tuple[Any, str, str]]  # (record, where for error messages, Example.source)


class DataError(ValueError):
    """Bad training data. The message names the file, the line (when there is one) and the field,
    and says what to do."""


# The bundled samples: demo.jsonl (24 short Q&A in the form "Answer: ...") and the same as demo.csv.
SAMPLES_DIR = Path(__file__).parent / "samples"
SAMPLE_DATA = SAMPLES_DIR / "demo.jsonl"


@dataclass(frozen=True)
class Example:
    """One training example: the chat query and the expert answer to it."""

    messages: tuple[dict, ...]  # optional system message(s), ..., ending with a user turn
    demonstration: str  # the expert answer
    source: str = ""  # where it came from, e.g. "demos.jsonl:12" or "dataset[3]"

    @property
    def prompt(self) -> str:
        """Content of the last user message."""
        return next((message["content"] for message in reversed(self.messages) if message["role"] == "user"), "")


def load_examples(source: str | Path | list[dict] | Any, *, limit: int | None = None) -> list[Example]:
    """Load and validate examples.

    source: a path to a .jsonl / .ndjson or .csv file, a `datasets.Dataset`, or a list of dicts.
    File lines are numbered from 1; dataset rows and list records by their 0-based index.
    limit: return only the first `limit` examples (later records are not read or checked).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(source, (str, Path)):
        records = _file_records(Path(source).expanduser())
    elif isinstance(source, list):
        records = _list_records(source)
    else:
        records = _dataset_records(source)
    examples = []
    for record, where, origin in records:
        examples.append(replace(example_from_record(record, where), source=origin))
        if len(examples) == limit:
            break
    return examples


def fingerprint(examples: list[Example]) -> dict:
    """What identifies a training set: a SHA-256 of the examples' content (messages and demonstrations, in
    order; not where they came from), their number and their file. `--resume` checks a run keeps its data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.messages, example.demonstration], ensure_ascii=False).encode() + b"\n")
    first = examples[0].source if examples else ""
    return {"sha256": digest.hexdigest(), "examples": len(examples), "source": first.rpartition(":")[0] or first}


def example_from_record(record: dict, where: str) -> Example:
    """Normalise one record; raises DataError naming `where` (e.g. 'file.jsonl, line 3') and the field."""
    if not isinstance(record, dict):
        raise DataError(f'{where}: expected an object like {{"prompt": ..., "demonstration": ...}}, '
                        f"got {_kind(record)}. Put one example per record.")
    if "messages" in record:
        messages = _messages(record["messages"], where, "messages")
        if messages[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant message (the demonstration), "
                            f"but the last role is '{messages[-1]['role']}'. Append the expert answer.")
        if len(messages) < 2 or messages[-2]["role"] != "user":
            raise DataError(f"{where}: field 'messages' needs a user message (the question) right before "
                            "the final assistant message.")
        return Example(messages[:-1], messages[-1]["content"])
    if "prompt" not in record:
        answers = [field for field in ANSWER_FIELDS if field in record]
        if answers:
            raise DataError(f"{where}: field 'prompt' is missing (the record has '{answers[0]}'). "
                            "Add the question as 'prompt'.")
        found = ", ".join(repr(key) for key in record) or "none"
        raise DataError(f"{where}: no 'prompt' or 'messages' field (fields found: {found}); {SHAPES}.")
    query = _query(record["prompt"], where)
    field = next((field for field in ANSWER_FIELDS if field in record), None)
    if field is None:
        raise DataError(f"{where}: field 'demonstration' is missing; add the expert answer as 'demonstration' "
                        "(or 'privileged_context' / 'completion').")
    value = record[field]
    if field == "completion" and isinstance(value, (list, tuple)):
        # TRL's conversational prompt/completion format: the completion is a list of messages.
        answer = _messages(value, where, field)
        if answer[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'completion' must end with an assistant message, "
                            f"but the last role is '{answer[-1]['role']}'.")
        return Example(query, answer[-1]["content"])
    return Example(query, _text(value, where, field))


def _query(value: Any, where: str) -> tuple[dict, ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": _text(value, where, "prompt")},)
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field 'prompt' must be a string or a list of messages, got {_kind(value)}.")
    messages = _messages(value, where, "prompt")
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: field 'prompt' must end with a user message, but the last role is "
                        f"'{messages[-1]['role']}'. Move the answer to 'demonstration'.")
    return messages


def _messages(value: Any, where: str, field: str) -> tuple[dict, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of chat messages like "
                        f'{{"role": "user", "content": "..."}}, got {_kind(value)}.')
    messages = []
    for index, message in enumerate(value):
        name = f"{field}[{index}]"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            got = f"fields {', '.join(map(repr, message))}" if isinstance(message, dict) else _kind(message)
            raise DataError(f"{where}: field '{name}' must be an object with 'role' and 'content', got {got}.")
        if message["role"] not in ROLES:
            raise DataError(f"{where}: field '{name}.role' is {message['role']!r}; "
                            "use 'system', 'user' or 'assistant'.")
        # Keep only role and content: that is all the chat template and the trainer use.
        messages.append({"role": message["role"], "content": _text(message["content"], where, f"{name}.content")})
    return tuple(messages)


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {_kind(value)}.")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty. Fill it in or remove the record.")
    return value


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _file_records(path: Path) -> Records:
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path (relative paths start from {Path.cwd()}).")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a file. Pass the .jsonl or .csv file itself.")
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        supported = ", ".join(JSONL_SUFFIXES + CSV_SUFFIXES)
        raise DataError(f"{path}: unsupported file type '{path.suffix}'. Supported: {supported} "
                        "(or pass a datasets.Dataset or a list of dicts).")
    text = _read_text(path)
    return _csv_records(path, text) if suffix in CSV_SUFFIXES else _jsonl_records(path, text)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the file ({error.strerror}).") from None
    if data.startswith(codecs.BOM_UTF8):  # Excel and Notepad write one; it would end up in the first field name
        data = data[len(codecs.BOM_UTF8):]
    # Decode the whole file at once, and on failure count newlines up to the bad byte to name its line.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}, line {line}: byte {data[error.start]:#04x} is not valid UTF-8. "
                        "Re-save the file as UTF-8 (e.g. 'Save as... > Encoding: UTF-8').") from None


def _jsonl_records(path: Path, text: str) -> Records:
    found = False
    # split("\n"), not splitlines(): JSON strings may hold \u2028 and friends, which are no line breaks here.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: invalid JSON at column {error.colno} ({error.msg}). Each line must be one "
                            "complete JSON object; look for a missing quote, comma or bracket.") from None
        found = True
        yield record, where, f"{path.name}:{number}"
    if not found:
        raise DataError(f"{path}: no examples (the file is empty or has only blank lines).")


def _csv_records(path: Path, text: str) -> Records:
    rows = _csv_rows(path, text)
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty).")
    header_line, header = rows[0]
    header = [name.strip() for name in header]  # "prompt, demonstration" is a common hand-written header
    if "prompt" not in header or not set(header) & set(ANSWER_FIELDS):
        found = ", ".join(repr(name) for name in header)
        raise DataError(f"{path}, line {header_line}: CSV header has columns {found}; needs 'prompt' and one of "
                        "'demonstration', 'privileged_context', 'completion'. Start with e.g. prompt,demonstration")
    if len(rows) == 1:
        raise DataError(f"{path}: no examples (the CSV has only a header).")
    for number, row in rows[1:]:
        where = f"{path}, line {number}"
        if len(row) != len(header):
            raise DataError(f"{where}: the row has {len(row)} cells but the header has {len(header)} columns. "
                            'Quote cells that contain commas or line breaks ("...").')
        yield dict(zip(header, row)), where, f"{path.name}:{number}"


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows with the line each starts on (a quoted cell may span several lines)."""
    # strict: an unclosed quote is an error instead of silently swallowing the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    end = 0  # line on which the previous row ended
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((end + 1, row))
            end = reader.line_num
    except csv.Error as error:
        raise DataError(f"{path}, line {end + 1}: cannot parse the CSV row ({error}). Close every quoted cell "
                        'and double quotes inside a cell ("").') from None
    return rows


def _list_records(records: list) -> Records:
    if not records:
        raise DataError("record list: no examples (the list is empty).")
    for index, record in enumerate(records):
        yield record, f"record {index}", f"record[{index}]"


def _dataset_records(source: Any) -> Records:
    import datasets  # lazy: importing it is slow, and only callers who already hold a Dataset need it

    if isinstance(source, datasets.DatasetDict):
        raise TypeError(f"got a DatasetDict with splits {list(source)}; pass one split, e.g. dataset['train'].")
    if not isinstance(source, datasets.Dataset):
        raise TypeError("load_examples() takes a file path, a datasets.Dataset or a list of dicts, "
                        f"got {type(source).__name__}.")
    columns = source.column_names
    if "messages" not in columns and ("prompt" not in columns or not set(columns) & set(ANSWER_FIELDS)):
        raise DataError(f"dataset has columns {', '.join(map(repr, columns))}; needs 'messages', or 'prompt' and "
                        "one of 'demonstration', 'privileged_context', 'completion'. Use dataset.rename_column().")
    if len(source) == 0:
        raise DataError("dataset: no examples (the dataset has no rows).")
    for index, row in enumerate(source):
        # Arrow fills a field that other rows have with None; drop those so the row's own shape is matched.
        yield {k: v for k, v in row.items() if v is not None}, f"dataset row {index}", f"dataset[{index}]"


class DataOrder:
    """Which examples come next: a seeded permutation of the examples per epoch, so a count of the examples
    seen is all a resumed run needs to continue in the same order."""

    def __init__(self, size: int, seed: int, seen: int = 0):
        self.size, self.seed, self.seen = size, seed, seen

    def peek(self, count: int) -> list[int]:
        """The indices of the next `count` examples, without moving on."""
        return [random.Random(self.seed * 100_003 + position // self.size).sample(range(self.size), self.size)
                [position % self.size] for position in range(self.seen, self.seen + count)]

    def take(self, count: int) -> list[int]:
        """The indices of the next `count` examples; the order moves on past them."""
        indices = self.peek(count)
        self.seen += count
        return indices
