"""Tests for sdft_kit.data_formats: each record format from a small file in tests/data_files, --columns, the
detected format's description, and one-line errors naming file, record and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdft_kit.data import DataError, fingerprint, load_examples
from sdft_kit.data_formats import describe, format_columns, format_name, parse_columns

FILES = Path(__file__).resolve().parent / "data_files"
SAMPLES = Path(__file__).resolve().parent.parent / "sdft_kit" / "samples"


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def error_of(source, *parts: str, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_examples(source, **kwargs)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message
    return message


def test_alpaca_json_array() -> None:
    examples = load_examples(FILES / "alpaca.json")
    assert [e.format for e in examples] == ["alpaca"] * 3
    assert examples[0].messages == (user("Give the capital of the country.\nFrance"),)  # input joined on a new line
    assert examples[0].demonstration == "The capital of France is Paris."
    assert examples[1].messages == (user("What is 7 plus 5?"),)  # an empty input adds nothing
    # system column and LLaMA-Factory's history: earlier turns of the query
    assert examples[2].messages == (system("You are a translator."), user("Translate to French: thank you"),
                                    assistant("Merci."), user("Translate to French.\nGood morning"))
    assert [e.source for e in examples] == ["alpaca.json:record 1", "alpaca.json:record 2", "alpaca.json:record 3"]
    assert describe(examples) == "Alpaca, 3 records; columns instruction+input -> prompt, output -> demonstration"
    assert format_name(examples) == "alpaca"


def test_sharegpt_multi_turn() -> None:
    first, second = load_examples(FILES / "sharegpt.json")
    assert first.messages == (user("What color is the sky on a clear day?"),) and first.demonstration == "Blue."
    # the last gpt turn is the demonstration; the earlier turns (and the record's system) are the prompt
    assert second.messages == (system("Be brief."), user("Name a primary color."), assistant("Red."),
                               user("Another one?"))
    assert second.demonstration == "Blue." and second.format == "sharegpt" and second.prompt == "Another one?"


def test_openai_messages_multi_turn_developer_role_and_text_parts() -> None:
    first, second = load_examples(FILES / "openai_messages.jsonl")
    assert first.messages == (system("You are a concise assistant."), user("How many legs does a spider have?"))
    assert second.messages == (system("Answer in one word."), user("What do bees make?"), assistant("Honey."),
                               user("And cows?"))
    assert second.demonstration == "Milk." and {first.format, second.format} == {"messages"}
    assert describe([first, second]).startswith("OpenAI messages, 2 records; columns messages before the last")


def test_sdft_paper_tool_use_file() -> None:
    """The official code's tool-use records: prompt (str) + golden_response (lines, joined with newlines)."""
    examples = load_examples(FILES / "sdft_tooluse.json")
    assert [e.format for e in examples] == ["sdft-tooluse"] * 2
    assert examples[0].prompt.endswith("Question: What is the weather in Oslo?")
    assert examples[0].demonstration == ('Thought: I need the weather in Oslo.\nAction: getWeather\n'
                                         'Action Input: {"city": "Oslo"}')
    assert describe(examples).startswith("SDFT paper (tool use), 2 records; columns prompt -> prompt, "
                                         "golden_response lines -> demonstration")


def test_sdft_paper_science_file() -> None:
    """The official code's science records: messages ([system, user]) + output_text."""
    examples = load_examples(FILES / "sdft_science.jsonl")
    assert [e.format for e in examples] == ["sdft-science"] * 2
    assert [m["role"] for m in examples[0].messages] == ["system", "user"]
    assert examples[1].demonstration.endswith("<answer>\nC\n</answer>")


def test_csv_with_columns_mapping() -> None:
    error_of(FILES / "qa.csv", "qa.csv, line 1: CSV header has columns 'question', 'answer', 'topic'",
             "--columns prompt=question,demonstration=answer")
    examples = load_examples(FILES / "qa.csv", columns="prompt=question,demonstration=answer")
    assert [(e.prompt, e.demonstration) for e in examples] == [("What is the capital of France?", "Paris."),
                                                              ("What is 1, 2, 3 summed?", "6.")]
    assert [e.source for e in examples] == ["qa.csv:2", "qa.csv:3"]
    assert describe(examples, parse_columns("prompt=question,demonstration=answer")) == (
        "prompt + demonstration, 2 records; columns question -> prompt, answer -> demonstration (--columns)")


def test_columns_can_add_a_system_column_and_rename_a_messages_column(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"q": "Q?", "a": "A.", "persona": "Be kind."}) + "\n"
                    + json.dumps({"q": "R?", "a": "B.", "persona": "Be kind."}) + "\n")
    examples = load_examples(path, columns={"prompt": "q", "demonstration": "a", "system": "persona"})
    assert examples[0].messages == (system("Be kind."), user("Q?"))
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"dialogue": [user("Q?"), assistant("A.")]}) + "\n")
    [example] = load_examples(chat, columns="messages=dialogue")
    assert example.format == "messages" and example.demonstration == "A."


def test_columns_errors_name_the_record_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"q": "Q?", "a": "A."}) + "\n" + json.dumps({"q": "R?", "answer": "B."}) + "\n")
    error_of(path, "d.jsonl, line 2", "--columns", "'a'", "'answer'", columns="prompt=q,demonstration=a")
    error_of(path, "d.jsonl, line 1", "no 'prompt' or 'messages' field", "--columns prompt=q,demonstration=a")
    with pytest.raises(ValueError, match="unknown target 'answer'"):
        parse_columns("answer=a")
    with pytest.raises(ValueError, match="TARGET=COLUMN"):
        parse_columns("prompt")
    assert format_columns(parse_columns(" prompt = q , demonstration=a ")) == "prompt=q,demonstration=a"


def test_alpaca_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "Q?", "input": "", "output": "A."},
                                {"instruction": "Q?", "input": 3, "output": "A."}], indent=1))
    error_of(path, "a.json, record 2 (line 7)", "field 'input'", "a number")
    path.write_text(json.dumps([{"instruction": "Q?", "input": "x"}]))
    error_of(path, "record 1", "field 'output' is missing")
    path.write_text(json.dumps([{"instruction": " ", "output": "A."}]))
    error_of(path, "record 1", "field 'instruction' is empty")


def test_sharegpt_errors_name_the_turn(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    turns = [{"from": "human", "value": "Q?"}, {"from": "function_call", "value": "{}"}, {"from": "gpt", "value": "A"}]
    path.write_text(json.dumps({"conversations": turns}) + "\n")
    error_of(path, "s.jsonl, line 1", "field 'conversations[1].from' is 'function_call'", "'human'")
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "Q?"}]}) + "\n")
    error_of(path, "field 'conversations' must end with an assistant message")


def test_mixed_formats_are_counted() -> None:
    examples = (load_examples([{"prompt": "Q?", "demonstration": "A."}])
                + load_examples([{"instruction": "Q?", "output": "A."}, {"instruction": "R?", "output": "B."}]))
    assert format_name(examples) == "alpaca 2, prompt-demonstration 1"
    assert describe(examples) == "3 records in several formats: Alpaca 2, prompt + demonstration 1"


def test_fingerprint_of_the_bundled_samples_is_unchanged() -> None:
    """--resume compares this digest: the new loaders read the existing files exactly as before (the value
    is what the loader before issue 25 computed)."""
    assert fingerprint(load_examples(SAMPLES / "demo.jsonl")) == {
        "sha256": "31964ed5476b70e3f7d7de89169d8529b51d37dc3cb99b0e9c034655e64bdebc", "examples": 24,
        "source": "demo.jsonl"}
    assert describe(load_examples(SAMPLES / "demo.csv")).startswith("prompt + demonstration, 8 records")
