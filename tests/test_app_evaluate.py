"""The app's Evaluate tab (sdft_kit.app_evaluate): a finished run beside its base model on the new task and the
prior-skills probe, several runs' curves on one plot, and where a run was logged."""

import json
import shutil

import pytest

from sdft_kit import app_data, app_evaluate
from sdft_kit import app_logic as logic
from sdft_kit.app_runs import APP_RUN, Trainings
from sdft_kit.config import Config
from sdft_kit.data import SAMPLES_DIR, load_examples

SAMPLE = SAMPLES_DIR / "demo.jsonl"
SFT = dict(method="sft", steps=1, batch_size=2, max_new_tokens=8, threads=1, report_to="none")


def _train(trainings, owner, config, examples, **kwargs):
    job = trainings.start(owner, config, examples, **kwargs)
    trainings.wait(owner)
    assert job.state == "done", trainings.status(owner).text
    return job.run_dir


def test_a_run_is_scored_on_its_held_out_records_and_the_skills_probe_beside_the_base_model(tmp_path, one_thread,
                                                                                            monkeypatch):
    monkeypatch.setattr(app_evaluate, "PROBE_LIMIT", 8)  # 8 of its 31 questions: the test's time, not its logic
    examples = app_data.parse_upload(SAMPLE.read_bytes())
    train, held = logic.split_held_out(examples, 15)
    trainings = Trainings(tmp_path)
    config = Config().replace(**SFT, learning_rate=1e-2)
    run_dir = _train(trainings, "login:ann", config, train, held_out=held)
    assert len(load_examples(run_dir / "data.jsonl")) == 20 and len(load_examples(run_dir / "heldout.jsonl")) == 4
    phases = []
    result = app_evaluate.evaluate_run(run_dir, lambda fraction, phase: phases.append(phase))
    assert phases == ["loading the model", "scoring the base model", "scoring the trained adapter"]
    assert result["new_task_measure"] == "ROUGE-L F1 of greedy answers to the 4 held-out demonstrations"
    assert result["prior_skills_measure"] == "accuracy on the 8 questions of the skills probe"
    base, trained = result["base"], result["trained"]
    assert base["prior_skills"] >= 0.9  # the probe holds questions the base model answers right
    assert all(0 <= score[key] <= 1 for score in (base, trained) for key in ("new_task", "prior_skills"))
    assert trained != base  # one step at lr 1e-2 moves the answers
    assert json.loads((run_dir / "evaluation.json").read_text()) == result == app_evaluate.saved_evaluation(run_dir)
    table = app_evaluate.score_table(result)
    change = (trained["prior_skills"] - base["prior_skills"]) * 100
    assert f"| {base['new_task']:.2f} | {trained['new_task']:.2f} | {trained['new_task'] - base['new_task']:+.2f} |" \
        in table
    assert f"| {base['prior_skills']:.0%} | {trained['prior_skills']:.0%} | {change:+.0f} points |" in table
    # the base model's scores are kept: scoring again (or another run of the same model) skips the base
    phases.clear()
    assert app_evaluate.evaluate_run(run_dir, lambda f, phase: phases.append(phase))["base"] == base
    assert "scoring the base model" not in phases

    # several runs' curves on one plot, each named by its folder
    second = shutil.copytree(run_dir, tmp_path / "sft-lr1e-3-000000")  # another run's records, as far as a plot sees
    figure = app_evaluate.runs_curves([run_dir, second])
    assert {trace.name for trace in figure.data if trace.showlegend is not False} >= {run_dir.name, second.name}
    assert app_evaluate.runs_curves([]) is None


def test_a_run_on_a_bundled_task_is_scored_on_its_eval_split(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setattr(app_evaluate, "TASK_EVAL_LIMIT", 3)
    path = app_data.SAMPLES[next(name for name, task in app_data.SAMPLE_TASKS.items() if task == "knowledge")]
    examples = app_data.parse_upload(path.read_bytes())
    run_dir = _train(Trainings(tmp_path), "login:ann", Config().replace(**SFT, model=str(tiny_llama_dir)), examples,
                     task="knowledge")
    result = app_evaluate.evaluate_run(run_dir)
    assert result["new_task_measure"] == "accuracy on 3 questions of the knowledge task's eval split"
    assert result["base"]["new_task"] in (0, 1 / 3, 2 / 3, 1)  # a share of 3 questions


def test_where_a_run_was_logged(tmp_path):
    run = tmp_path / "sdft-system-lr1e-3-120000"
    run.mkdir()
    for tracker, expected in (("trackio", "`trackio show --project sdft-kit-ann`"),
                              ("tensorboard", f"`tensorboard --logdir {run / 'tensorboard'}`"),
                              ("wandb", "Weights & Biases, project `sdft-kit-ann`"), ("none", "Not logged")):
        (run / APP_RUN).write_text(json.dumps({"tracker": tracker, "tracker_project": "sdft-kit-ann"}))
        assert expected in app_evaluate.tracker_note(run)


def test_a_run_without_held_out_records_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    kind, items, measure = app_evaluate._new_task(run, {})
    assert (kind, items) == ("none", []) and measure.startswith("no held-out records")
    table = app_evaluate.score_table({"run": "run", "base": {"new_task": None, "prior_skills": 0.9},
                                      "trained": {"new_task": None, "prior_skills": 0.8}, "seconds": 3.0,
                                      "date": "today", "new_task_measure": measure,
                                      "prior_skills_measure": "accuracy on the 31 questions of the skills probe"})
    assert "| – | – | – |" in table and "| 90% | 80% | -10 points |" in table


@pytest.mark.parametrize("name", ["knowledge", "tooluse"])
def test_the_bundled_task_samples_load_in_the_data_tab(name):
    path = app_data.SAMPLES[next(sample for sample, task in app_data.SAMPLE_TASKS.items() if task == name)]
    assert len(app_data.parse_upload(path.read_bytes(), max_record_chars=32_000)) >= 30
