"""Experiment tracking: trackio and TensorBoard, offline, read back through their own libraries."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from sdft_kit.cli import main
from sdft_kit.config import Config
from sdft_kit.tracking import markdown_table, open_tracker, resolve_report_to, sample_row, scalars


def record(step: int, loss: float) -> dict:
    return {"step": step, "steps": 3, "method": "sdft", "loss": loss, "mean_kl": loss / 2, "lr": 1e-3 * step,
            "grad_norm": 2.0, "is_weight": None, "tokens": 8 + step,
            "seconds": {"rollout": 1.0, "teacher": 0.5, "student": 0.25, "optimizer": 0.125, "total": 1.875},
            "elapsed_s": 1.875 * step, "peak_mem_mb": 900.0,
            "sample": {"prompt": "What is 2+2?", "source": "demo.jsonl:1", "tokens": ["Answer", ":", " 4|", "\n"],
                       "values": [9.0, 1.0, 2.0, 3.0], "in_loss": [0, 1, 1, 1]}}


def test_scalars_are_flat_and_skip_what_is_none():
    values = scalars(record(2, 0.5))
    assert values["loss"] == 0.5 and values["mean_kl"] == 0.25 and values["lr"] == 2e-3 and values["tokens"] == 10
    assert values["seconds/rollout"] == 1.0 and values["seconds/total"] == 1.875 and values["peak_mem_mb"] == 900.0
    assert "is_weight" not in values  # None for the hf engine
    # the sample: its text, and the mean of the values counted in the loss (the first token is skipped)
    assert sample_row(record(2, 0.5)) == [2, "demo.jsonl:1", "What is 2+2?", "Answer: 4|\n", 2.0]
    table = markdown_table([sample_row(record(2, 0.5))])
    assert "| 2 | demo.jsonl:1 | What is 2+2? | Answer: 4\\|↵  | 2.0000 |" in table.splitlines()


def test_auto_means_trackio_when_installed(monkeypatch):
    import importlib.util

    assert resolve_report_to("tensorboard") == "tensorboard"
    installed = importlib.util.find_spec("trackio") is not None
    assert resolve_report_to("auto") == ("trackio" if installed else "none")
    assert Config().train.report_to == "auto"
    with pytest.raises(ValueError, match="report_to must be one of"):
        Config().replace(report_to="mlflow")


def test_a_missing_tracker_package_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--data", "sdft_kit/samples/demo.jsonl", "--out", str(out), "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err
    assert "needs the wandb package" in err and "pip install" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


TRACKIO_SCRIPT = textwrap.dedent("""
    import json, socket, sys
    attempts = []
    real_connect = socket.socket.connect

    def guarded(self, address):  # anything but a local socket is recorded and refused
        if self.family != socket.AF_UNIX and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(str(address))
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    socket.socket.connect = guarded
    sys.path.insert(0, sys.argv[1])
    from test_tracking import record
    from sdft_kit.config import Config
    from sdft_kit.tracking import open_tracker

    with open_tracker(Config().replace(report_to="trackio"), sys.argv[2]) as tracker:
        for step, loss in ((1, 0.75), (2, 0.5), (3, 0.25)):
            tracker.log(record(step, loss))
    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("sdft-kit", "trackio-run")
    print(json.dumps({"logs": logs, "db": str(SQLiteStorage.get_project_db_path("sdft-kit")),
                      "attempts": attempts}, default=str))
""")


def test_trackio_logs_scalars_and_samples_into_its_local_folder_only(tmp_path):
    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    for remote in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
        env.pop(remote, None)
    result = subprocess.run([sys.executable, "-c", TRACKIO_SCRIPT, os.path.dirname(__file__),
                             str(tmp_path / "trackio-run")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Trackio" not in result.stdout  # trackio's banners go to stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["attempts"] == []  # nothing tried to leave the machine
    assert out["db"].startswith(str(tmp_path / "trackio"))
    assert not (tmp_path / "hf" / "trackio").exists()
    steps = {log["step"]: log for log in out["logs"] if "loss" in log}
    assert sorted(steps) == [1, 2, 3]
    assert [steps[s]["loss"] for s in (1, 2, 3)] == [0.75, 0.5, 0.25]
    assert steps[2]["seconds/rollout"] == 1.0 and steps[3]["lr"] == pytest.approx(3e-3)
    assert steps[1]["samples"]["_type"] == "trackio.table"
    assert steps[1]["samples"]["_value"] == [{"step": 1, "source": "demo.jsonl:1", "prompt": "What is 2+2?",
                                               "completion": "Answer: 4|\n", "mean_value": 2.0}]
    everything = next(log["all_samples"]["_value"] for log in out["logs"] if "all_samples" in log)
    assert [row["step"] for row in everything] == [1, 2, 3]


def test_tensorboard_tracker_writes_events_read_back_by_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open_tracker(Config().replace(report_to="tensorboard"), tmp_path) as tracker:
        for step, loss in ((1, 0.75), (2, 0.5)):
            tracker.log(record(step, loss))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.75), (2, 0.5)]
    assert [e.value for e in events.Scalars("seconds/teacher")] == [0.5, 0.5]
    text = events.Tensors("samples/text_summary")
    assert [t.step for t in text] == [1, 2]
    assert "Answer: 4\\|↵" in text[0].tensor_proto.string_val[0].decode()


def test_cli_train_shows_a_bar_and_logs_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "sdft_kit.cli", "train", "--data", "sdft_kit/samples/demo.jsonl",
                             "--out", str(out), "--steps", "2", "--batch-size", "2", "--max-new-tokens", "8",
                             "--skip-check", "--threads", "1", "--report-to", "tensorboard"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # stdout: one line per step, for scripts; stderr: the tqdm bar with elapsed < remaining
    step_lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in step_lines] == ["1/2", "2/2"]
    assert re.search(r"SDFT: +100%.*\| 2/2 \[\d+:\d\d<\d+:\d\d", result.stderr), result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [e.value for e in events.Scalars("mean_kl")] == pytest.approx([r["mean_kl"] for r in records], rel=1e-6)
    assert [e.step for e in events.Scalars("tokens")] == [1, 2]


def test_cli_compare_shows_bars_and_logs_each_training_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "cmp"
    result = subprocess.run([sys.executable, "-m", "sdft_kit.cli", "compare", "--task", "knowledge", "--out", str(out),
                             "--steps", "1", "--batch-size", "1", "--max-new-tokens", "4", "--eval-limit", "1",
                             "--eval-max-new-tokens", "4", "--threads", "1", "--report-to", "tensorboard"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    # a bar per training run and per evaluation (base: new task and probe; then each method's two)
    for bar in ("SFT: 100%", "SDFT: 100%"):
        assert bar in result.stderr
    assert result.stderr.count("evaluate:   0%") == 6 and "evaluate: 100%" in result.stderr
    for method in ("sft", "sdft"):
        events = EventAccumulator(str(out / f"{method}-seed0" / "tensorboard"))
        events.Reload()
        record = json.loads((out / f"{method}-seed0" / "metrics.jsonl").read_text())
        assert [e.value for e in events.Scalars("loss")] == pytest.approx([record["loss"]], rel=1e-6)


def test_the_forgetting_monitors_scores_are_logged_from_step_0():
    from sdft_kit.tracking import Tracker

    class Kept(Tracker):
        def __init__(self):
            super().__init__()
            self.logged = []

        def _log(self, step, values, rows):
            self.logged.append((step, values))

    first = {**record(1, 0.5), "monitor_start": {"step": 0, "prior_skills": 1.0, "new_task": 0.25, "seconds": 3.0},
             "monitor": {"step": 1, "prior_skills": 0.75, "new_task": 0.5, "seconds": 2.0}}
    tracker = Kept()
    tracker.log(first)
    tracker.log(record(2, 0.4))
    (step0, start), (step1, values), (step2, later) = tracker.logged
    assert step0 == 0 and start == {"monitor/prior_skills": 1.0, "monitor/new_task": 0.25, "monitor/seconds": 3.0}
    assert step1 == 1 and values["monitor/prior_skills"] == 0.75 and values["monitor/new_task"] == 0.5
    assert values["loss"] == 0.5 and step2 == 2 and not any(key.startswith("monitor/") for key in later)
