"""Training data: expert demonstrations from files (JSON Lines, JSON arrays, CSV/TSV, Parquet), a saved or Hub
dataset, a `datasets.Dataset` or a list of dicts, in any of the record formats of `data_formats` (prompt +
demonstration, OpenAI messages, ShareGPT, Alpaca, the SDFT paper's files), with optional column renaming.

Any problem raises one `DataError` naming the file, line (or record) and field and saying what to do: no
traceback hunting. Where records come from: `data_sources`; what a record looks like: `data_formats`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .data_formats import DataError, describe, detect_format, format_name, map_columns, parse_columns
from .data_sources import check_record, source_records

__all__ = ["DataError", "Example", "SAMPLE_DATA", "SAMPLES_DIR", "describe", "example_from_record", "fingerprint",
           "format_name", "load_examples", "parse_columns"]

# The bundled samples: demo.jsonl (24 short Q&A in the form "Answer: ...") and demo.csv (8 of them, as CSV).
SAMPLES_DIR = Path(__file__).parent / "samples"
SAMPLE_DATA = SAMPLES_DIR / "demo.jsonl"


@dataclass(frozen=True)
class Example:
    """One training example: the chat query and the expert answer to it."""

    messages: tuple[dict, ...]  # optional system message(s), earlier turns, ..., ending with a user turn
    demonstration: str  # the expert answer
    source: str = ""  # where it came from, e.g. "demos.jsonl:12" or "dataset[3]"
    format: str = field(default="", compare=False)  # the record's format (data_formats.FORMATS), e.g. "alpaca"

    @property
    def prompt(self) -> str:
        """Content of the last user message."""
        return next((message["content"] for message in reversed(self.messages) if message["role"] == "user"), "")


def load_examples(source: str | Path | list[dict] | Any, *, limit: int | None = None,
                  columns: str | dict[str, str] | None = None) -> list[Example]:
    """Load and validate examples.

    source: a file (.jsonl / .ndjson / .json, .csv / .tsv, .parquet), a folder saved with datasets'
    save_to_disk, a Hub dataset id ("owner/name" or "owner/name:split"; needs a network), a
    `datasets.Dataset`, or a list of dicts. Lines, JSON-array records and Parquet rows are numbered from 1;
    dataset rows and list records by their 0-based index.
    limit: return only the first `limit` examples (later records are not read or checked).
    columns: rename the user's columns to what a format reads, "prompt=question,demonstration=answer"
    (targets: prompt, demonstration, system, messages).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    columns = parse_columns(columns)
    examples = []
    for record, where, origin in source_records(source, columns):
        examples.append(replace(example_from_record(record, where, columns), source=origin))
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


def example_from_record(record: dict, where: str, columns: dict[str, str] | None = None) -> Example:
    """Normalise one record of any known format; raises DataError naming `where` (e.g. 'file.jsonl, line 3')
    and the field. A string 'system' field becomes the system message (unless the query has one)."""
    record = map_columns(check_record(record, where), columns, where)
    found = detect_format(record, where, columns)
    messages, demonstration = found.convert(record, where)
    system = record.get("system")
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages = ({"role": "system", "content": system}, *messages)
    return Example(tuple(messages), demonstration, format=found.name)


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
