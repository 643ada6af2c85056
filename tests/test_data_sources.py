"""Tests for sdft_kit.data_sources: JSON arrays and JSON Lines, TSV, Parquet, datasets saved to disk and the Hub
path (run offline: a local Dataset stands in for the Hub's answer), each error one line naming file and record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_data_formats import error_of  # one line naming file, record and field

from sdft_kit.data import load_examples

FILES = Path(__file__).resolve().parent / "data_files"
RECORDS = [{"prompt": "Q1?", "demonstration": "A1."}, {"prompt": "Q2?", "demonstration": "A2."}]


def test_json_file_holding_an_array_or_json_lines(tmp_path: Path) -> None:
    array = tmp_path / "d.json"
    array.write_text(json.dumps(RECORDS, indent=2))
    assert [(e.prompt, e.source) for e in load_examples(array)] == [("Q1?", "d.json:record 1"),
                                                                    ("Q2?", "d.json:record 2")]
    lines = tmp_path / "lines.json"  # what Dataset.to_json writes: JSON Lines under a .json name
    lines.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert [e.source for e in load_examples(lines)] == ["lines.json:1", "lines.json:2"]
    compact = tmp_path / "c.jsonl"  # an array on one line, whatever the suffix
    compact.write_text(json.dumps(RECORDS))
    assert len(load_examples(compact)) == 2


@pytest.mark.parametrize("text, parts", [
    ('[{"prompt": "Q?", "demonstration": "A."},\n {"prompt": "R?"}]', ("record 2 (line 2)", "'demonstration'")),
    ('[{"prompt": "Q?", "demonstration": "A."}\n {"prompt": "R?"}]', ("line 2", "expected ',' or ']' after record 1, got '{'")),
    ('[{"prompt": "Q?",\n "demonstration": "A."', ("line 2", "invalid JSON")),
    ('[{"prompt": "Q?", "demonstration": "A."}', ("not closed",)),
    ('[{"prompt": "Q?", "demonstration": "A."}] x', ("after the closing ']'",)),
    ("[]", ("expected a non-empty array",)),
    ('[{"prompt": "Q?", "demonstration": "A."}, 3]', ("record 2", "expected an object", "a number")),
    ('{\n "prompt": "Q?",\n "demonstration": "A."\n}', ("one JSON object spread over lines",)),
])
def test_json_array_errors_name_record_and_line(tmp_path: Path, text: str, parts: tuple) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    error_of(path, "bad.json", *parts)


def test_tsv() -> None:
    examples = load_examples(FILES / "qa.tsv", columns="prompt=question,demonstration=answer")
    assert [(e.prompt, e.demonstration, e.source) for e in examples] == [
        ("What is the capital of France?", "Paris.", "qa.tsv:2"), ("How many legs does a spider have?", "Eight.",
                                                                   "qa.tsv:3")]
    error_of(FILES / "qa.tsv", "qa.tsv, line 1: TSV header has columns 'question', 'answer'")


def test_parquet(tmp_path: Path) -> None:
    examples = load_examples(FILES / "alpaca.parquet")
    assert [(e.prompt, e.demonstration, e.source, e.format) for e in examples] == [
        ("Give the capital of the country.\nItaly", "Rome.", "alpaca.parquet:row 1", "alpaca"),
        ("What is 9 times 3?", "27.", "alpaca.parquet:row 2", "alpaca")]  # a null input is no input
    error_of(FILES / "alpaca.parquet", "alpaca.parquet", "lacks 'question', named in --columns",
             columns="prompt=question,demonstration=output")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    error_of(broken, "broken.parquet: cannot read it as Parquet")


def test_parquet_through_datasets_and_a_saved_dataset_folder(tmp_path: Path) -> None:
    """The SDFT paper's data ships as save_to_disk folders (data/tooluse_data/train_data)."""
    datasets = pytest.importorskip("datasets")
    paper = datasets.Dataset.from_list(json.loads((FILES / "sdft_tooluse.json").read_text()))
    paper.save_to_disk(tmp_path / "train_data")
    examples = load_examples(tmp_path / "train_data")
    assert [e.format for e in examples] == ["sdft-tooluse"] * 2 and examples[0].source == "train_data[0]"
    assert examples[1].demonstration.startswith("Thought: I need the weather in Lima.\nAction: getWeather")
    datasets.DatasetDict({"train": paper, "test": paper.select([0])}).save_to_disk(tmp_path / "both")
    assert len(load_examples(tmp_path / "both")) == 2  # the train split
    datasets.DatasetDict({"test": paper}).save_to_disk(tmp_path / "test_only")
    error_of(tmp_path / "test_only", "test_only", "without a 'train' split (splits: test)")
    from_parquet = datasets.Dataset.from_parquet(str(FILES / "alpaca.parquet"), cache_dir=str(tmp_path / "cache"))
    assert [e.demonstration for e in load_examples(from_parquet)] == ["Rome.", "27."]
    error_of(datasets.Dataset.from_list([{"q": "Q?", "a": "A."}]), "dataset has columns 'q', 'a'",
             "--columns prompt=q,demonstration=a")


def test_a_hub_id_goes_to_load_dataset(monkeypatch) -> None:
    """The Hub is out of reach here: load_dataset is replaced by a local Dataset to check what it is asked."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(repo, split):
        calls.append((repo, split))
        return datasets.Dataset.from_list([{"question": "Q?", "answer": "A."}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    [example] = load_examples("someone/qa-set", columns="prompt=question,demonstration=answer")
    assert example.source == "someone/qa-set[0]" and example.demonstration == "A."
    load_examples("someone/qa-set:validation", columns="prompt=question,demonstration=answer")
    assert calls == [("someone/qa-set", "train"), ("someone/qa-set", "validation")]
    error_of("someone/missing.jsonl", "file not found")  # a file name is never taken for a Hub id


def test_a_hub_id_offline_is_one_line() -> None:
    code = ("from sdft_kit.data import load_examples\n"
            "try:\n    load_examples('nobody-here/no-such-dataset')\n"
            "except Exception as error:\n    print(type(error).__name__, '|', error)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    line = result.stdout.strip()
    assert line.startswith("DataError | nobody-here/no-such-dataset: not a file or folder here") and "\n" not in line
    assert "HF_HUB_OFFLINE" in line
