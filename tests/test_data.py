"""Tests for sdft_kit.data: every accepted shape, and one clear DataError per kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdft_kit.data import DataError, Example, example_from_record, load_examples

SAMPLES = Path(__file__).resolve().parent.parent / "sdft_kit" / "samples"
SYSTEM = {"role": "system", "content": "Be brief."}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def load_error(source, *parts: str) -> str:
    """Load `source`, expect a DataError, and check that its message contains every part."""
    with pytest.raises(DataError) as info:
        load_examples(source)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def record_error(record, tmp_path: Path, *parts: str) -> str:
    """Write one record as line 2 of a JSONL file (after a good one) and expect a DataError about it."""
    good = {"prompt": "Hi?", "demonstration": "Answer: Hi."}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, record])
    return load_error(path, "bad.jsonl", "line 2", *parts)


# --- accepted shapes ----------------------------------------------------------------------------


def test_native_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q?", "demonstration": "A.", "extra": 1}])
    [example] = load_examples(path)
    assert example == Example(({"role": "user", "content": "Q?"},), "A.", "d.jsonl:1")
    assert example.prompt == "Q?"


def test_privileged_context_format() -> None:
    example = example_from_record({"prompt": "Q?", "privileged_context": "A."}, "x")
    assert example.demonstration == "A." and example.prompt == "Q?"


def test_completion_string() -> None:
    assert example_from_record({"prompt": "Q?", "completion": "A."}, "x").demonstration == "A."


def test_completion_messages() -> None:
    record = {"prompt": [{"role": "user", "content": "Q?"}], "completion": [{"role": "assistant", "content": "A."}]}
    example = example_from_record(record, "x")
    assert example.demonstration == "A." and example.messages == ({"role": "user", "content": "Q?"},)


def test_messages_with_system_message() -> None:
    record = {"messages": [SYSTEM, {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    example = example_from_record(record, "x")
    assert example.messages == (SYSTEM, {"role": "user", "content": "Q?"})
    assert example.demonstration == "A." and example.prompt == "Q?"


def test_prompt_as_message_list_keeps_only_role_and_content() -> None:
    record = {"prompt": [SYSTEM, {"role": "user", "content": "Q?", "name": "bob"}], "demonstration": "A."}
    assert example_from_record(record, "x").messages == (SYSTEM, {"role": "user", "content": "Q?"})


def test_messages_shape_wins_over_prompt() -> None:
    record = {"messages": [{"role": "user", "content": "M?"}, {"role": "assistant", "content": "M."}],
              "prompt": "P?", "demonstration": "P."}
    assert example_from_record(record, "x").demonstration == "M."


def test_contents_are_not_stripped() -> None:
    assert example_from_record({"prompt": " Q? ", "demonstration": "A.\n"}, "x").demonstration == "A.\n"


def test_csv_with_multiline_cell_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,demonstration\n"Two\nlines?","A, b."\n\nQ2?,A2.\n', encoding="utf-8")
    examples = load_examples(path)
    assert [e.prompt for e in examples] == ["Two\nlines?", "Q2?"]
    assert examples[0].demonstration == "A, b."
    assert [e.source for e in examples] == ["d.csv:2", "d.csv:5"]


def test_csv_prompt_cell_is_plain_text(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,demonstration\n"[{""role"": ""user""}]",A.\n', encoding="utf-8")
    assert load_examples(path)[0].prompt == '[{"role": "user"}]'


def test_csv_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,demonstration\nQ?,A.\n")
    assert load_examples(path)[0].prompt == "Q?"


def test_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([
        {"prompt": "Q1?", "demonstration": "A1."},
        {"prompt": "Q2?", "demonstration": "A2."},
    ])
    examples = load_examples(dataset)
    assert [e.demonstration for e in examples] == ["A1.", "A2."]
    assert examples[1].source == "dataset[1]"


def test_dataset_with_mixed_shapes() -> None:
    # Arrow gives each row every column; a row without a value gets None.
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict(
        {"prompt": ["Q1?", "Q2?"], "demonstration": ["A1.", None], "completion": [None, "A2."]}
    )
    assert [e.demonstration for e in load_examples(dataset)] == ["A1.", "A2."]


def test_list_of_dicts() -> None:
    examples = load_examples([{"prompt": "Q?", "demonstration": "A."}, {"prompt": "R?", "completion": "B."}])
    assert [e.demonstration for e in examples] == ["A.", "B."]
    assert examples[1].source == "record[1]"


def test_blank_lines_keep_numbering(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('\n{"prompt": "Q?", "demonstration": "A."}\n  \r\n{"prompt": "R?", "demonstration": ""}\n\n')
    assert load_error(path, "d.jsonl", "line 4", "'demonstration'", "empty")


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "Q?", "demonstration": "A."}\r\n{"prompt": "R?", "demonstration": "B."}\r\n')
    assert [e.source for e in load_examples(path)] == ["d.jsonl:1", "d.jsonl:2"]


def test_limit(tmp_path: Path) -> None:
    records = [{"prompt": f"Q{i}?", "demonstration": f"A{i}."} for i in range(5)]
    path = write_jsonl(tmp_path / "d.jsonl", records + [{"bad": 1}])  # records after the limit are not read
    assert [e.prompt for e in load_examples(path, limit=3)] == ["Q0?", "Q1?", "Q2?"]
    with pytest.raises(ValueError):
        load_examples(path, limit=0)


def test_bundled_samples() -> None:
    jsonl = load_examples(SAMPLES / "demo.jsonl")
    assert len(jsonl) == 24
    assert sum(e.messages[0]["role"] == "system" for e in jsonl) == 2
    assert all(e.demonstration.startswith("Answer: ") for e in jsonl)
    csv_examples = load_examples(SAMPLES / "demo.csv")
    assert len(csv_examples) == 8
    by_prompt = {e.prompt: e.demonstration for e in jsonl}
    assert all(by_prompt[e.prompt] == e.demonstration for e in csv_examples)


# --- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    load_error(tmp_path / "nope.jsonl", "nope.jsonl", "not found")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    load_error(folder, "data.jsonl", "directory")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("hello")
    load_error(path, "d.txt", "'.txt'", ".jsonl", ".csv")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("")
    load_error(path, "d.jsonl", "no examples")


def test_only_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n\n")
    load_error(path, "d.jsonl", "no examples")


def test_csv_only_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,demonstration\n")
    load_error(path, "d.csv", "no examples")


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "Q?", "demonstration": "A."}\n{"prompt": "Q?" "demonstration": "A."}\n')
    load_error(path, "d.jsonl", "line 2", "column 17", "JSON")


def test_json_line_not_an_object(tmp_path: Path) -> None:
    record_error(["Q?", "A."], tmp_path, "object", "a list")


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "Q?", "demonstration": "A."}\n\n{"prompt": "caf\xe9?", "demonstration": "A."}\n')
    load_error(path, "d.jsonl", "line 3", "UTF-8", "Re-save")


def test_non_utf8_bytes_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,demonstration\ncaf\xe9?,A.\n")
    load_error(path, "d.csv", "line 2", "UTF-8")


def test_csv_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nQ?,A.\n")
    load_error(path, "d.csv", "line 1", "'question'", "'answer'", "'prompt'", "'demonstration'")


def test_csv_wrong_cell_count(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("prompt,demonstration\nQ?,A.\nWhat is 1, 2?,A.\n")
    load_error(path, "d.csv", "line 3", "3 cells", "Quote")


def test_csv_unclosed_quote(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,demonstration\nQ?,A.\n"Q2?,A.\nQ3?,A.\n')
    load_error(path, "d.csv", "line 3", "quote")


def test_csv_empty_cell(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,demonstration\nQ?,A.\n"Q?\nstill Q?",  \n')
    load_error(path, "d.csv", "line 3", "'demonstration'", "empty")


def test_dataset_missing_columns() -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"question": "Q?", "answer": "A."}])
    load_error(dataset, "dataset", "'question'", "'answer'", "'prompt'", "'demonstration'")


def test_dataset_bad_row() -> None:
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list([{"prompt": "Q?", "demonstration": "A."}, {"prompt": "Q?", "demonstration": " "}])
    load_error(dataset, "dataset row 1", "'demonstration'", "empty")


def test_list_bad_record() -> None:
    load_error([{"prompt": "Q?", "demonstration": "A."}, {"prompt": 3, "demonstration": "A."}],
               "record 1", "'prompt'", "a number")


def test_empty_list() -> None:
    load_error([], "no examples")


def test_unsupported_source_type() -> None:
    with pytest.raises(TypeError):
        load_examples(42)  # type: ignore[arg-type]


# --- bad records --------------------------------------------------------------------------------


def test_missing_demonstration(tmp_path: Path) -> None:
    record_error({"prompt": "Q?"}, tmp_path, "'demonstration'", "missing", "privileged_context", "completion")


def test_missing_prompt(tmp_path: Path) -> None:
    record_error({"demonstration": "A."}, tmp_path, "'prompt'", "missing")


def test_no_known_fields(tmp_path: Path) -> None:
    record_error({"question": "Q?", "answer": "A."}, tmp_path, "'question'", "'prompt'", "'messages'", "demonstration")


def test_empty_prompt(tmp_path: Path) -> None:
    record_error({"prompt": "  \n", "demonstration": "A."}, tmp_path, "'prompt'", "empty")


def test_empty_demonstration(tmp_path: Path) -> None:
    record_error({"prompt": "Q?", "demonstration": ""}, tmp_path, "'demonstration'", "empty")


def test_prompt_is_a_number(tmp_path: Path) -> None:
    record_error({"prompt": 7, "demonstration": "A."}, tmp_path, "'prompt'", "a number")


def test_demonstration_is_a_list(tmp_path: Path) -> None:
    record_error({"prompt": "Q?", "demonstration": ["A."]}, tmp_path, "'demonstration'", "string", "a list")


def test_privileged_context_is_null(tmp_path: Path) -> None:
    record_error({"prompt": "Q?", "privileged_context": None}, tmp_path, "'privileged_context'", "null")


def test_message_without_role(tmp_path: Path) -> None:
    record = {"prompt": [SYSTEM, {"content": "Q?"}], "demonstration": "A."}
    record_error(record, tmp_path, "'prompt[1]'", "'role'")


def test_message_without_content(tmp_path: Path) -> None:
    record = {"messages": [{"role": "user", "text": "Q?"}, {"role": "assistant", "content": "A."}]}
    record_error(record, tmp_path, "'messages[0]'", "'content'", "'text'")


def test_message_content_not_a_string(tmp_path: Path) -> None:
    record = {"messages": [{"role": "user", "content": ["Q?"]}, {"role": "assistant", "content": "A."}]}
    record_error(record, tmp_path, "'messages[0].content'", "a list")


def test_message_is_not_an_object(tmp_path: Path) -> None:
    record_error({"prompt": ["Q?"], "demonstration": "A."}, tmp_path, "'prompt[0]'", "a string")


def test_bad_role(tmp_path: Path) -> None:
    record = {"prompt": [{"role": "human", "content": "Q?"}], "demonstration": "A."}
    record_error(record, tmp_path, "'prompt[0].role'", "'human'", "'user'")


def test_prompt_list_not_ending_with_user(tmp_path: Path) -> None:
    record = {"prompt": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
              "demonstration": "A."}
    record_error(record, tmp_path, "'prompt'", "end with a user message")


def test_empty_prompt_list(tmp_path: Path) -> None:
    record_error({"prompt": [], "demonstration": "A."}, tmp_path, "'prompt'", "non-empty list")


def test_messages_not_ending_with_assistant(tmp_path: Path) -> None:
    record = {"messages": [{"role": "assistant", "content": "A."}, {"role": "user", "content": "Q?"}]}
    record_error(record, tmp_path, "'messages'", "end with an assistant message", "'user'")


def test_messages_without_user_before_answer(tmp_path: Path) -> None:
    record = {"messages": [SYSTEM, {"role": "assistant", "content": "A."}]}
    record_error(record, tmp_path, "'messages'", "user message")


def test_messages_not_a_list(tmp_path: Path) -> None:
    record_error({"messages": "Q? A."}, tmp_path, "'messages'", "a string")


def test_completion_messages_not_ending_with_assistant(tmp_path: Path) -> None:
    record = {"prompt": "Q?", "completion": [{"role": "user", "content": "A."}]}
    record_error(record, tmp_path, "'completion'", "assistant")
