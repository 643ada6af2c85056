import json

import pytest

from sdft_kit.data import DataError
from sdft_kit.evaluate import extracted_answer_match, fact_match, parse_tool_call, tool_call_match
from sdft_kit.tasks import SCIENCE_SYSTEM_PROMPT, TASK_DATA, TASKS, load_eval_items, load_science_qa, load_task


@pytest.fixture(scope="module")
def tasks():
    return {name: load_task(name) for name in TASKS}


def test_counts_and_kinds(tasks):
    counts = {name: (len(t.train), len(t.eval)) for name, t in tasks.items()}
    assert counts["knowledge"] == (40, 56)
    assert counts["tooluse"] == (32, 20)
    assert counts["skills_probe"][0] == 0 and counts["skills_probe"][1] >= 25  # a probe: never trained on
    assert {i.kind for i in tasks["knowledge"].eval} == {"fact"}
    assert [i.group for i in tasks["knowledge"].eval].count("indirect") == 16
    assert {i.kind for i in tasks["tooluse"].eval} == {"tool"}
    assert {i.kind for i in tasks["skills_probe"].eval} == {"choice"}
    for task in tasks.values():
        assert task.description
        assert all(i.answers and all(a.strip() for a in i.answers) for i in task.eval)
        assert all(i.messages[-1]["role"] == "user" for i in task.eval)


def test_no_eval_item_leaks_into_train(tasks):
    train_prompts = {ex.prompt.strip().lower() for t in tasks.values() for ex in t.train}
    for task in tasks.values():
        prompts = [i.prompt.strip().lower() for i in task.eval]
        assert len(set(prompts)) == len(prompts), f"{task.name}: duplicate eval questions"
        assert not set(prompts) & train_prompts, f"{task.name}: an eval question is also a train prompt"


def test_knowledge_demonstrations_state_the_facts(tasks):
    task = tasks["knowledge"]
    direct = [i for i in task.eval if i.group == "direct"]
    # fact i is taught by demonstration i and recalled by direct question i
    assert all(fact_match(ex.demonstration, i) for ex, i in zip(task.train, direct))
    everything = " ".join(ex.demonstration for ex in task.train)
    assert all(fact_match(everything, i) for i in task.eval if i.group == "indirect")
    assert all("2025" in ex.demonstration for ex in task.train)


def test_tooluse_calls_parse_and_eval_arguments_are_unseen(tasks):
    task = tasks["tooluse"]
    train_calls = [parse_tool_call(ex.demonstration) for ex in task.train]
    assert None not in train_calls
    assert {action for action, _ in train_calls} == {"tide_level", "bike_reserve", "recipe_scale", "parcel_track"}
    seen_values = {v for _, args in train_calls for v in args.values()}
    for i in task.eval:
        action, args = parse_tool_call(i.answers[0])
        assert tool_call_match(i.answers[0], i)
        assert "Action Input:" in i.prompt and action in i.prompt  # the tool documentation is in the prompt
        assert not set(args.values()) & seen_values  # arguments never shown in a demonstration


def test_skills_probe_items_are_four_option_choices(tasks):
    for i in tasks["skills_probe"].eval:
        assert len(i.choices) == len(set(i.choices)) == 4 and i.answers[0] in i.choices


def test_unknown_task():
    with pytest.raises(ValueError, match="knowledge, tooluse, skills_probe"):
        load_task("medical")


def test_load_eval_items_rejects_bad_records(tmp_path):
    path = tmp_path / "eval.jsonl"
    for line, message in [
        ('{"prompt": "Q?"}', "answers"),
        ('{"prompt": "Q?", "answers": []}', "answers"),
        ('{"prompt": "Q?", "answers": ["x"], "kind": "regex"}', "kind"),
        ('{"prompt": "Q?", "answers": ["x"], "kind": "choice", "choices": ["y", "z"]}', "choices"),
        ('{"answers": ["x"]}', "prompt"),
    ]:
        path.write_text(line + "\n")
        with pytest.raises(DataError, match=message):
            load_eval_items(path)


def test_science_qa_sample():
    task = load_science_qa(TASK_DATA / "science_qa_sample.jsonl")
    assert [i.answers for i in task.eval] == [["B"], ["C"], ["A"]]
    assert {i.kind for i in task.eval} == {"extract"}
    assert all(i.messages[0]["role"] == "system" and "<answer>" in i.messages[0]["content"] for i in task.eval)
    assert task.eval[1].messages[0]["content"] == SCIENCE_SYSTEM_PROMPT  # added: the record had none
    assert len(task.train) == 2  # records 2 and 3 carry a demonstration
    for ex in task.train:
        matching = next(i for i in task.eval if i.source == ex.source)
        assert extracted_answer_match(ex.demonstration, matching)
        assert ex.messages == matching.messages


def test_science_qa_variants_and_errors(tmp_path):
    path = tmp_path / "sci.jsonl"
    records = [
        {"question": "Which is a noble gas?", "choices": ["Neon", "Iron", "Salt", "Water"], "answer": 0},
        {"question": "2 + 2?", "options": {"A": "3", "B": "4", "C": "5", "D": "6"}, "label": "(b)"},
        {"prompt": "Q?\n\nA. a\nB. b\nC. c\nD. d", "completion": "<answer>D</answer>"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records))
    task = load_science_qa(path)
    assert [i.answers[0] for i in task.eval] == ["A", "B", "D"]
    assert "A. Neon\nB. Iron" in task.eval[0].prompt
    assert len(task.train) == 1 and load_science_qa(path, limit=2).eval[-1].answers == ["B"]
    for record, message in [
        ({"prompt": "Q?", "answer": "E"}, "not an option letter"),
        ({"prompt": "Q?"}, "no answer"),
        ({"prompt": "Q?", "demonstration": "A cell is small."}, "no answer"),  # no <answer> tag to read
        ({"question": "Q?", "choices": ["a", "b"], "answer": "A"}, "4 options"),
        ({"text": "Q?"}, "needs 'prompt'"),
    ]:
        path.write_text(json.dumps(record))
        with pytest.raises(DataError, match=message):
            load_science_qa(path)
