"""Tests for sdft_kit.sweep: the Pareto frontier by hand, the per-point summary, and a tiny sweep killed and resumed."""

import json

import pytest
import torch

from sdft_kit import trainer
from sdft_kit.cli import main
from sdft_kit.config import Config
from sdft_kit.sweep import format_sweep, pareto_front, read_points, summarize_points, sweep

torch.set_num_threads(1)


def test_pareto_front_by_hand():
    points = [(0.0, 1.0), (0.2, 0.9), (0.1, 0.8), (0.3, 0.5), (0.3, 0.4), (0.2, 0.9)]
    # (0.1, 0.8) is beaten by (0.2, 0.9); (0.3, 0.4) by (0.3, 0.5); equal points both stay
    assert pareto_front(points) == [0, 1, 5, 3]
    assert pareto_front([(0.5, 0.5)]) == [0]


def test_summary_means_over_seeds_and_marks_each_methods_frontier():
    base = {"new_task": {"accuracy": 0.0}, "previous_skills": {"accuracy": 1.0}}
    def point(method, lr, new, prev, seed):
        return {"method": method, "learning_rate": lr, "steps": 10, "seed": seed, "new_task": new,
                "previous_skills": prev, "train_s": 5.0, "step_s": 0.5, "eval_s": 2.0}
    points = [point("sft", 1e-3, 0.2, 0.9, 0), point("sft", 1e-3, 0.4, 0.7, 1),  # mean (0.3, 0.8)
              point("sft", 3e-3, 0.1, 0.7, 0), point("sft", 3e-3, 0.1, 0.7, 1),  # beaten by lr 1e-3
              point("sdft", 1e-3, 0.0, 0.9, 0), point("sdft", 1e-3, 0.0, 0.9, 1)]  # beaten by the base itself
    rows = {(r["method"], r["learning_rate"]): r for r in summarize_points(base, points)}
    sft = rows[("sft", 1e-3)]
    assert sft["new_task"]["mean"] == pytest.approx(0.3) and sft["previous_skills"]["mean"] == pytest.approx(0.8)
    assert sft["new_task"]["std"] == pytest.approx(2 ** 0.5 * 0.1) and sft["seeds"] == [0, 1]
    assert sft["frontier"] and not rows[("sft", 3e-3)]["frontier"] and not rows[("sdft", 1e-3)]["frontier"]
    report = {"task": "t", "base": base, "rows": list(rows.values()), "points": points, "grid_points": 8}
    text = format_sweep(report)
    assert "30.0 ± 14.1" in text and "SFT frontier: lr 0.001 x 10 steps (30.0, 80.0)" in text
    assert "SDFT frontier: the base model alone" in text and "6 of 8 points scored" in text
    assert "| SFT | 0.001 | 10 | 2 | 30.0 ± 14.1 | 80.0 ± 14.1 | * |" in format_sweep(report, markdown=True)


def test_a_line_cut_off_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "points.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    logged = []
    assert read_points(path, logged.append) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n' and "cut off" in logged[0]
    path.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_points(path)


def test_a_killed_sweep_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    """The CI smoke sweep: 2 points (SFT, SDFT) x 2 steps, killed during the second point, resumed from the CLI."""
    out = tmp_path / "sweep"
    config = Config().replace(batch_size=2, max_new_tokens=4, threads=1, learning_rate=1e-3)
    real_step = trainer.Trainer.train_step
    steps_run = []

    def train_step(self):
        steps_run.append(self.config.train.method)
        if len(steps_run) == 4:  # the second step of the second point (SDFT): a kill mid-training
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(trainer.Trainer, "train_step", train_step)
    grid = dict(methods=["sft", "sdft"], learning_rates=[1e-3], steps=[2], seeds=1, out_dir=out, eval_limit=2,
                eval_max_new_tokens=4, progress=False, log=lambda _: None)
    with pytest.raises(KeyboardInterrupt):
        sweep("knowledge", config, **grid)
    (first,) = read_points(out / "points.jsonl")
    assert (first["method"], first["steps"], first["seed"]) == ("sft", 2, 0)
    assert (out / "runs" / "sdft-lr0.001-steps2-seed0" / "config.yaml").is_file()  # cut off mid-training
    assert steps_run == ["sft", "sft", "sdft", "sdft"]

    steps_run.clear()
    flags = ["--batch-size", "2", "--max-new-tokens", "4", "--threads", "1", "--eval-limit", "2",
             "--eval-max-new-tokens", "4", "--quiet"]
    assert main(["sweep", "--task", "knowledge", "--learning-rates", "1e-3", "--steps", "2", "--seeds", "1",
                 "--out", str(out), *flags]) == 0
    assert steps_run == ["sdft", "sdft"]  # only the point that was cut off, from its start
    points = read_points(out / "points.jsonl")
    assert points[0] == first and [p["method"] for p in points] == ["sft", "sdft"]
    assert len((out / "runs" / "sdft-lr0.001-steps2-seed0" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (out / "runs" / "sdft-lr0.001-steps2-seed0" / "checkpoint").exists()
    report = json.loads((out / "report.json").read_text())
    assert [(r["method"], r["steps"], r["seeds"]) for r in report["rows"]] == [("sdft", 2, [0]), ("sft", 2, [0])]
    for row in report["rows"]:
        assert 0.0 <= row["new_task"]["mean"] <= 1.0 and 0.0 <= row["previous_skills"]["mean"] <= 1.0
        assert isinstance(row["frontier"], bool)
    assert report["base"]["previous_skills"]["accuracy"] == 1.0
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and "SFT frontier" in page and "<table>" in page
    printed = capsys.readouterr().out
    assert "SDFT frontier" in printed and "2 of 2 points scored" in printed

    # the same folder refuses other settings, and prints its table on request
    assert main(["sweep", "--task", "knowledge", "--learning-rates", "1e-3", "--steps", "2", "--seeds", "1",
                 "--out", str(out), *flags[:-1], "--max-new-tokens", "6"]) == 2
    assert "other settings (config differ)" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out), "--summary", "--markdown"]) == 0
    assert "| SFT | 0.001 | 2 | 1 |" in capsys.readouterr().out
    assert main(["sweep", "--task", "knowledge", "--learning-rates", "fast", "--steps", "2", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--learning-rates takes comma-separated float values" in capsys.readouterr().err
