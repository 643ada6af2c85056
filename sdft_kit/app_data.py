"""The web app's Data tab, as plain functions (no gradio here).

    parse_upload(bytes)          uploaded JSONL / JSON array / CSV / TSV / Parquet, in any record format
                                 (data_formats) -> examples, or a DataError naming line (or record) and field
    data_status(examples, columns)  "✓ 52 examples: Alpaca, 52 records; columns instruction+input -> prompt, ..."
    data_stats, data_page        length statistics, and the table a page at a time
    edit_example(...)            add, fix or remove one demonstration (the tab's editor)
    preview_rows(examples, ...)  the first examples exactly as the model sees them, with token counts

Everything the tab sends to the browser is bounded: a page of rows, cells and prompts cut for display.
"""

from __future__ import annotations

import html
import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from .config import Config
from .data import SAMPLE_DATA, SAMPLES_DIR, DataError, Example, describe, example_from_record, load_examples
from .data_formats import parse_columns
from .demos import DemoSelector, student_prompt, teacher_chat_template, teacher_prompt

TASK_DATA = SAMPLES_DIR.parent / "task_data"  # tasks.TASK_DATA (tasks itself imports torch)
PARQUET_MAGIC = b"PAR1"

SAMPLES = {"demo.jsonl (24 short Q&A)": SAMPLE_DATA, "demo.csv (8 of them, as CSV)": SAMPLES_DIR / "demo.csv",
           "knowledge task (40 invented facts; scored on its eval split)": TASK_DATA / "knowledge_train.jsonl",
           "tooluse task (32 tool calls; scored on its eval split)": TASK_DATA / "tooluse_train.jsonl"}
# Samples that are a bundled task's train split: the Evaluate tab scores a run on the task's eval split.
SAMPLE_TASKS = {name: path.name.removesuffix("_train.jsonl") for name, path in SAMPLES.items()
                if path.parent == TASK_DATA}
UPLOAD_NAME = "uploaded file"
PREVIEW_CHARS = 2_000  # each prompt shown in a preview card (the rest is counted, not sent)
CELL_CHARS = 240  # each text cell of the data table
PAGE_ROWS = 10


def upload_kind(data: bytes) -> str:
    """What an upload holds, from its bytes alone: parquet (its magic number), jsonl ('{' first), json ('['
    first), tsv (a tab but no comma in the first line) or csv."""
    if data[:4] == PARQUET_MAGIC:
        return "parquet"
    start = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start in (b"{", b"["):
        return "jsonl" if start == b"{" else "json"
    first_line = data.lstrip(b"\xef\xbb\xbf\r\n").split(b"\n", 1)[0]
    return "tsv" if b"\t" in first_line and b"," not in first_line else "csv"


def parse_upload(data: bytes, max_bytes: int = 20 * 2**20, max_record_chars: int | None = None,
                 columns: str | None = None) -> list[Example]:
    """Examples from the bytes of an uploaded JSONL, JSON-array, CSV, TSV or Parquet file, in any record format
    load_examples reads (columns: its --columns); raises DataError with the line (or record) and field.

    The bytes are only parsed: the uploader's file name is never used (not as a path, not even for
    the type; `upload_kind` tells it from the bytes). A record longer than `max_record_chars` (prompt +
    demonstration) is refused, naming it."""
    if len(data) > max_bytes:
        raise DataError(f"{UPLOAD_NAME}: {_size(len(data))} is over the {_size(max_bytes)} limit. "
                        "Upload a smaller file (or train from the CLI).")
    if not data.strip():
        raise DataError(f"{UPLOAD_NAME}: the file is empty. Upload a JSONL, JSON, CSV or Parquet file of "
                        "prompt/demonstration records.")
    kind = upload_kind(data)
    if kind != "parquet" and b"\x00" in data[:8192]:
        raise DataError(f"{UPLOAD_NAME}: this looks like a binary file, not text. Upload a JSONL, JSON, CSV or "
                        "Parquet file (one example per line, record or row).")
    examples = _file_examples(data, kind, columns)
    for ex in examples:
        check_record_size(ex, max_record_chars, f"{UPLOAD_NAME}, {ex.source}")
    return examples


def check_record_size(example: Example, max_chars: int | None, where: str) -> None:
    """Refuse a record longer than `max_chars` (its messages + demonstration), naming `where`; None: no limit."""
    size = sum(len(m["content"]) for m in example.messages) + len(example.demonstration)
    if max_chars is not None and size > max_chars:
        raise DataError(f"{where}: the record is {size:,} characters, over this server's limit of {max_chars:,} "
                        "per record. Shorten it (or train from the CLI).")


KIND_NAMES = {"jsonl": "JSONL", "json": "JSON array", "csv": "CSV", "tsv": "TSV", "parquet": "Parquet"}


def _file_examples(data: bytes, kind: str, columns: str | None) -> list[Example]:
    with tempfile.TemporaryDirectory(prefix="sdft-kit-upload-") as folder:
        path = Path(folder) / f"upload.{kind}"  # our own name: load_examples picks the parser by suffix
        path.write_bytes(data)
        try:
            examples = load_examples(path, columns=columns)
        except DataError as error:  # name the upload, not our temporary file
            raise DataError(str(error).replace(str(path), f"{UPLOAD_NAME} ({KIND_NAMES[kind]})")) from None
    # "upload.jsonl:12" -> "line 12", "upload.json:record 3" -> "record 3", "upload.parquet:row 2" -> "row 2"
    shown = [ex.source.split(":", 1)[1] for ex in examples]
    return [replace(ex, source=f"line {where}" if where.isdigit() else where) for ex, where in zip(examples, shown)]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def save_examples(examples: list[Example], path: Path) -> Path:
    """Write examples as JSONL that load_examples reads back (the run's own copy of its data)."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"prompt": list(ex.messages), "demonstration": ex.demonstration}) + "\n")
    return path


def token_counts(examples: list[Example], tokenizer) -> list[tuple[int, int]]:
    """(prompt tokens, demonstration tokens) per example: the texts alone, before the chat template."""
    prompts = ["\n".join(m["content"] for m in ex.messages) for ex in examples]
    lengths = tokenizer(prompts + [ex.demonstration for ex in examples], add_special_tokens=False,
                        return_attention_mask=False)["input_ids"]
    return [(len(p), len(d)) for p, d in zip(lengths[:len(examples)], lengths[len(examples):])]


def data_stats(examples: list[Example], tokenizer) -> str:
    """Length statistics as a short Markdown table: tokens of prompts and demonstrations, the longest record."""
    counts = token_counts(examples, tokenizer)
    longest = max(range(len(counts)), key=lambda i: sum(counts[i]))
    rows = ["| tokens | min | median | max |", "|---|---|---|---|"]
    for name, column in (("prompt", [p for p, _ in counts]), ("demonstration", [d for _, d in counts])):
        rows.append(f"| {name} | {min(column)} | {statistics.median(column):g} | {max(column)} |")
    return (f"**{len(examples)} records** · longest: {examples[longest].source} ({sum(counts[longest])} tokens)\n\n"
            + "\n".join(rows))


def _cell(text: str, limit: int = CELL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def page_count(examples: list[Example], per_page: int = PAGE_ROWS) -> int:
    return max(1, -(-len(examples) // per_page))


def data_page(examples: list[Example], tokenizer, page: int, per_page: int = PAGE_ROWS) -> list[list]:
    """One page of the data table (pages from 1): #, source, prompt, demonstration and their token counts."""
    page = min(max(int(page), 1), page_count(examples, per_page))
    first = (page - 1) * per_page
    shown = examples[first:first + per_page]
    return [[first + i + 1, ex.source, _cell(ex.prompt), _cell(ex.demonstration), p, d]
            for i, (ex, (p, d)) in enumerate(zip(shown, token_counts(shown, tokenizer)))]


def edit_example(examples: list[Example], number: int, prompt: str = "", demonstration: str = "",
                 remove: bool = False, max_record_chars: int | None = None) -> list[Example]:
    """The examples with record `number` (from 1) replaced, removed, or, for number 0, a new one added.

    A fixed record keeps its system and earlier messages; only the last user turn and the answer change.
    The edited record is held to `max_record_chars`, as an uploaded one is."""
    number = int(number or 0)
    if not 0 <= number <= len(examples):
        raise ValueError(f"record {number} does not exist: pick 1 to {len(examples)}, or 0 to add a new one")
    if remove:
        if number == 0:
            raise ValueError(f"pick the record to remove (1 to {len(examples)})")
        return examples[:number - 1] + examples[number:]
    edited = example_from_record({"prompt": prompt, "demonstration": demonstration},
                                 f"record {number or len(examples) + 1}")
    if number == 0:
        edited = replace(edited, source=f"added {len(examples) + 1}")
    else:
        messages = (*examples[number - 1].messages[:-1], {"role": "user", "content": prompt})
        edited = Example(messages, edited.demonstration, f"edited {number}")
    check_record_size(edited, max_record_chars, f"record {number or len(examples) + 1}")
    return [*examples, edited] if number == 0 else [*examples[:number - 1], edited, *examples[number:]]


_tokenizers: dict = {}


def load_tokenizer(model: str):
    """The tokenizer alone (cached), for previews; never runs remote code."""
    if model not in _tokenizers:
        from transformers import AutoTokenizer

        from .models import model_path

        try:
            _tokenizers[model] = AutoTokenizer.from_pretrained(model_path(model), trust_remote_code=False)
        except OSError as err:
            raise RuntimeError(f"Could not load the tokenizer of {model!r} ({err}). Use 'embedded', a local folder "
                               "or a Hugging Face id that is cached or reachable.") from None
    return _tokenizers[model]


def _shown(text: str) -> str:
    extra = len(text) - PREVIEW_CHARS
    return text if extra <= 0 else text[:PREVIEW_CHARS] + f"… ({extra:,} more characters)"


def preview_rows(examples: list[Example], tokenizer, config: Config | None = None, n: int = 3) -> list[dict]:
    """The first `n` examples as the model sees them: chat-rendered student and teacher prompts (each cut
    at PREVIEW_CHARS for display) and their token counts."""
    config = config or Config()
    selector = DemoSelector(examples, config.teacher.demo_selection, config.teacher.num_demos, config.train.seed)
    chat_template = teacher_chat_template(tokenizer, config.teacher)
    rows = []
    for index, ex in enumerate(examples[:n]):
        student = student_prompt(tokenizer, ex)
        teacher = teacher_prompt(tokenizer, ex, selector.demos_for(index), config.teacher.template, chat_template)
        rows.append({
            "source": ex.source, "student_prompt": _shown(student), "teacher_prompt": _shown(teacher),
            "demonstration": _shown(ex.demonstration),
            "student_tokens": len(tokenizer(student, add_special_tokens=False).input_ids),
            "teacher_tokens": len(tokenizer(teacher, add_special_tokens=False).input_ids),
            "demonstration_tokens": len(tokenizer(ex.demonstration, add_special_tokens=False).input_ids),
        })
    return rows


def data_status(examples: list[Example], columns: str | None = None) -> str:
    """The Data tab's status line (HTML): the count and the detected format with its column mapping."""
    return (f"✓ <b>{len(examples)} examples</b> loaded: "
            f"{html.escape(describe(examples, parse_columns(columns)))}.")
