"""Where training records come from: files, saved datasets, the Hub, a list of dicts.

    source_records(source, columns)   (record, where, origin) for each record, where is what an error names
                                      ("demos.json, record 3 (line 12)") and origin what Example.source keeps

Files by suffix: .jsonl / .ndjson / .json (JSON Lines, or one JSON array: a file whose first character is '['),
.csv and .tsv (a header row), .parquet. A folder written by `datasets`' save_to_disk (a DatasetDict's: its
'train' split). A path that does not exist but reads like a Hub dataset id ("owner/name" or
"owner/name:split") is loaded with `datasets.load_dataset` (needs a network). Records of files are numbered
from 1 (lines, records, rows); rows of a dataset by their 0-based index, as dataset[i] reads them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .data_formats import DataError, check_columns, kind

Records = Iterator[tuple[Any, str, str]]  # (record, where for error messages, Example.source)

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = JSON_SUFFIXES + tuple(TABLE_DELIMITERS) + PARQUET_SUFFIXES
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


def source_records(source: Any, columns: dict[str, str] | None = None) -> Records:
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists() and isinstance(source, str) and HUB_ID.match(source) and path.suffix not in SUFFIXES:
            return hub_records(source, columns)
        return file_records(path, columns)
    if isinstance(source, list):
        return list_records(source)
    return dataset_records(source, "dataset", columns)


def file_records(path: Path, columns: dict[str, str] | None = None) -> Records:
    if not path.exists():
        raise DataError(f"{path}: file not found. Check the path (relative paths start from {Path.cwd()}).")
    if path.is_dir():
        if any((path / name).is_file() for name in SAVED_DATASET_FILES):
            return saved_dataset_records(path, columns)
        raise DataError(f"{path} is a directory, not a file or a saved dataset. Pass the data file itself.")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return parquet_records(path, columns)
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'. Supported: {', '.join(SUFFIXES)}, a folder "
                        "saved with datasets' save_to_disk, or a Hub dataset id (or pass a datasets.Dataset or a list "
                        "of dicts).")
    text = read_text(path)
    if suffix in TABLE_DELIMITERS:
        return table_records(path, text, TABLE_DELIMITERS[suffix], columns)
    return json_array_records(path, text) if text.lstrip()[:1] == "[" else jsonl_records(path, text)


def read_text(path: Path) -> str:
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


def jsonl_records(path: Path, text: str) -> Records:
    found = False
    # split("\n"), not splitlines(): JSON strings may hold \u2028 and friends, which are no line breaks here.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            whole = _single_object(text) if number == 1 else None
            if whole is not None:  # a pretty-printed file holding one object, not one record per line
                raise DataError(f"{path}: holds one JSON object spread over lines, not one record per line. Put "
                                "the records in an array [...] or one per line (JSON Lines).") from None
            raise DataError(f"{where}: invalid JSON at column {error.colno} ({error.msg}). Each line must be one "
                            "complete JSON object; look for a missing quote, comma or bracket.") from None
        found = True
        yield record, where, f"{path.name}:{number}"
    if not found:
        raise DataError(f"{path}: no examples (the file is empty or has only blank lines).")


def _single_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def json_array_records(path: Path, text: str) -> Records:
    """The records of one JSON array, each named by its number (from 1) and the line it starts on."""
    decoder = json.JSONDecoder()
    position, line, count = text.index("[") + 1, text.count("\n", 0, text.index("[")) + 1, 0

    def skip(at: int) -> int:
        nonlocal line
        end = len(text) - len(text[at:].lstrip())
        line += text.count("\n", at, end)
        return end

    while True:
        position = skip(position)
        if position < len(text) and text[position] == "]":
            break
        if position >= len(text):
            raise DataError(f"{path}, line {line}: the JSON array is not closed; end it with ']'.")
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: invalid JSON at column {error.colno} ({error.msg}); look "
                            "for a missing quote, comma or bracket.") from None
        count += 1
        yield record, f"{path}, record {count} (line {line})", f"{path.name}:record {count}"
        line += text.count("\n", position, end)
        position = skip(end)
        if position < len(text) and text[position] == ",":
            position += 1
        elif position >= len(text):
            raise DataError(f"{path}, line {line}: the JSON array is not closed; end it with ']'.")
        elif text[position] != "]":
            raise DataError(f"{path}, line {line}: expected ',' or ']' after record {count}, got "
                            f"{text[position]!r}.")
    if text[position + 1:].strip():
        raise DataError(f"{path}, line {line}: text after the closing ']' of the JSON array; remove it.")
    if not count:
        raise DataError(f"{path}: expected a non-empty array of records like "
                        '[{"prompt": ..., "demonstration": ...}, ...]; the array is empty.')


def table_records(path: Path, text: str, delimiter: str, columns: dict[str, str] | None) -> Records:
    kind_name = "TSV" if delimiter == "\t" else "CSV"
    rows = _table_rows(path, text, delimiter, kind_name)
    if not rows:
        raise DataError(f"{path}: no examples (the file is empty).")
    header_line, header = rows[0]
    header = [name.strip() for name in header]  # "prompt, demonstration" is a common hand-written header
    check_columns(header, f"{path}, line {header_line}: {kind_name} header", columns)
    if len(rows) == 1:
        raise DataError(f"{path}: no examples (the {kind_name} has only a header).")
    for number, row in rows[1:]:
        where = f"{path}, line {number}"
        if len(row) != len(header):
            raise DataError(f"{where}: the row has {len(row)} cells but the header has {len(header)} columns. "
                            'Quote cells that contain the delimiter or line breaks ("...").')
        yield dict(zip(header, row)), where, f"{path.name}:{number}"


def _table_rows(path: Path, text: str, delimiter: str, kind_name: str) -> list[tuple[int, list[str]]]:
    """Non-blank rows with the line each starts on (a quoted cell may span several lines)."""
    # strict: an unclosed quote is an error instead of silently swallowing the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[tuple[int, list[str]]] = []
    end = 0  # line on which the previous row ended
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((end + 1, row))
            end = reader.line_num
    except csv.Error as error:
        raise DataError(f"{path}, line {end + 1}: cannot parse the {kind_name} row ({error}). Close every quoted "
                        'cell and double quotes inside a cell ("").') from None
    return rows


def parquet_records(path: Path, columns: dict[str, str] | None) -> Records:
    import pyarrow as pa  # comes with datasets
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path}: cannot read it as Parquet ({first}).") from None
    check_columns(table.schema_arrow.names, f"{path}: the Parquet file", columns)
    if table.metadata.num_rows == 0:
        raise DataError(f"{path}: no examples (the Parquet file has no rows).")
    return _rows(table.iter_batches(batch_size=1024), f"{path}, row", f"{path.name}:row", start=1)


def _rows(batches, where: str, origin: str, start: int = 0) -> Records:
    number = start
    for batch in batches:
        for row in batch.to_pylist():
            # Arrow fills a field that other rows have with None; drop those so the row's own shape is matched.
            yield {k: v for k, v in row.items() if v is not None}, f"{where} {number}", f"{origin} {number}"
            number += 1


def list_records(records: list) -> Records:
    if not records:
        raise DataError("record list: no examples (the list is empty).")
    for index, record in enumerate(records):
        yield record, f"record {index}", f"record[{index}]"


def dataset_records(source: Any, name: str, columns: dict[str, str] | None = None) -> Records:
    import datasets  # lazy: importing it is slow, and only callers who already hold a Dataset need it

    if isinstance(source, datasets.DatasetDict):
        raise TypeError(f"got a DatasetDict with splits {list(source)}; pass one split, e.g. dataset['train'].")
    if not isinstance(source, datasets.Dataset):
        raise TypeError("load_examples() takes a file path, a datasets.Dataset or a list of dicts, "
                        f"got {type(source).__name__}.")
    check_columns(source.column_names, name, columns)
    if len(source) == 0:
        raise DataError(f"{name}: no examples (the dataset has no rows).")
    origin = "dataset" if name == "dataset" else name
    return _dataset_rows(source, name, origin)


def _dataset_rows(source, name: str, origin: str) -> Records:
    for index, row in enumerate(source):
        yield ({k: v for k, v in row.items() if v is not None}, f"{name} row {index}",
               f"{origin}[{index}]")


def saved_dataset_records(path: Path, columns: dict[str, str] | None) -> Records:
    """A folder written by save_to_disk: a Dataset, or a DatasetDict's 'train' split."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path}: cannot load the saved dataset ({first}).") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a saved DatasetDict without a 'train' split (splits: "
                            f"{', '.join(loaded)}); pass the split's folder, e.g. {path / next(iter(loaded))}.")
        loaded = loaded["train"]
    return dataset_records(loaded, path.name, columns)


def hub_records(name: str, columns: dict[str, str] | None) -> Records:
    """A dataset on the Hugging Face Hub, "owner/name" (split train) or "owner/name:split"."""
    import datasets

    repo, _, split = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, split=split or "train")
    except Exception as error:  # offline, unknown id, no such split, gated: the Hub's and datasets' own errors
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{name}: not a file or folder here, and loading it as a Hugging Face Hub dataset failed "
                        f"({type(error).__name__}: {first}). Check the path, or the dataset id and the network "
                        "(HF_HUB_OFFLINE).") from None
    return dataset_records(loaded, name, columns)


def check_record(record: Any, where: str) -> dict:
    if not isinstance(record, dict):
        raise DataError(f'{where}: expected an object like {{"prompt": ..., "demonstration": ...}}, '
                        f"got {kind(record)}. Put one example per record.")
    return record
