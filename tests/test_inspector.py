"""The prompt inspector: token streams side by side, and each flag on a record that earns it (and not otherwise)."""

import json

import pytest

from sdft_kit import Config, Trainer, load_examples
from sdft_kit.cli import main
from sdft_kit.data import Example
from sdft_kit.inspector import inspect_prompts
from sdft_kit.models import load_tokenizer

CONTEXT = 8192  # SmolLM2-135M's max_position_embeddings


def _kinds(inspection):
    return {flag.kind for record in inspection.records for flag in record.flags}


@pytest.fixture
def tokenizer():
    return load_tokenizer("embedded")


def test_paper_template_prompts_differ_only_where_the_demonstration_goes(tokenizer, demo_examples):
    inspection = inspect_prompts(tokenizer, demo_examples, Config().replace(template="paper"), context=CONTEXT)
    assert len(inspection.records) == len(demo_examples) and not inspection.errors and not inspection.warnings
    record = inspection.records[0]
    prefix, suffix = record.shared()
    # both start with the same system block and end with the same assistant header
    assert record.student_tokens[:prefix] == record.teacher_tokens[:prefix] and prefix > 10
    assert record.student_tokens[-suffix:] == record.teacher_tokens[-suffix:] == ["<|im_end|>", "\n", "<|im_start|>",
                                                                                   "ass", "istant", "\n"]
    shown = inspection.text(n=1)
    assert "teacher" in shown and "[[" in shown and "prompts OK" in shown
    assert "<div" in inspection.html(n=1)


def test_system_template_replaces_the_default_system_prompt_without_a_warning(tokenizer, demo_examples):
    # The 'system' template (the default preset's) puts the demonstration in a system message that replaces
    # SmolLM2's default one by design (demos.teacher_messages): not a mismatch to warn about on every record.
    inspection = inspect_prompts(tokenizer, demo_examples[:3], Config().replace(template="system"), context=CONTEXT)
    assert not inspection.warnings and not inspection.errors
    record = inspection.records[0]
    assert "SmolLM" in "".join(record.student_tokens) and "SmolLM" not in "".join(record.teacher_tokens)


def test_a_thinking_block_on_one_side_only_is_flagged(tokenizer, demo_examples):
    # a template that opens <think> only when the conversation starts with a system message
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% if messages[0].role == 'system' %}<think>\n"
        "{% endif %}{% endif %}")
    inspection = inspect_prompts(tokenizer, demo_examples[:2], Config().replace(template="system"), context=CONTEXT)
    assert "thinking" in _kinds(inspection)
    assert "opens a <think> block for the teacher only" in inspection.warnings[0][1].message


def test_too_long_prompts_are_errors_and_long_demonstrations_warnings(tokenizer):
    examples = [Example(({"role": "user", "content": "word " * 300},), "fine", "long.jsonl:1"),
                Example(({"role": "user", "content": "Hi?"},), "a long answer " * 30, "long.jsonl:2")]
    inspection = inspect_prompts(tokenizer, examples, Config().replace(max_new_tokens=16), context=256)
    errors = inspection.errors
    assert {record.source for record, _ in errors} == {"long.jsonl:1"}  # both of its prompts are over
    assert "more than the model's context of 256 tokens" in errors[0][1].message
    assert [(r.source, f.kind) for r, f in inspection.warnings] == [("long.jsonl:2", "long demo")]
    assert inspection.summary().startswith("error: long.jsonl:1:")
    # a configured limit below the model's context counts too
    tight = inspect_prompts(tokenizer, examples[1:], Config().replace(max_new_tokens=16, max_context=40),
                            context=CONTEXT)
    assert tight.errors and tight.context == 40


def test_a_missing_chat_template_is_an_error(tokenizer, demo_examples):
    tokenizer.chat_template = None
    inspection = inspect_prompts(tokenizer, demo_examples, Config().replace(template="paper"), context=CONTEXT)
    assert [flag.kind for _, flag in inspection.errors] == ["template"]


def test_train_stops_before_step_1_on_a_prompt_longer_than_the_context(lora_model, tmp_path):
    model, tokenizer = lora_model
    huge = [Example(({"role": "user", "content": "x" * 200_000},), "y", "big.jsonl:7")]
    with pytest.raises(ValueError, match="big.jsonl:7: the student prompt is .* tokens"):
        Trainer(Config().replace(steps=1, batch_size=1), huge, tmp_path / "run", model=model, tokenizer=tokenizer)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step: the folder may be reused as it is


def test_cli_inspect_prints_the_streams_and_fails_on_errors(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "What is 2+2?", "demonstration": "4"}) + "\n"
                    + json.dumps({"prompt": "word " * 400, "demonstration": "ok"}) + "\n")
    assert main(["inspect", "--data", str(data), "--n", "1", "--max-context", "300"]) == 1
    out = capsys.readouterr().out
    assert "== d.jsonl:1: student" in out and "-- teacher:" in out and "error: d.jsonl:2:" in out
    assert main(["inspect", "--data", str(data), "--n", "0", "--max-new-tokens", "8"]) == 0
    assert load_examples(data)  # the data file is untouched and still valid
