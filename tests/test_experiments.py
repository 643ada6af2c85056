import json

import pytest
import torch

from sdft_kit.cli import main
from sdft_kit.config import Config
from sdft_kit.experiments import continual, format_table, mean_std, side_by_side, summarize
from sdft_kit.views import compare_scores

torch.set_num_threads(1)
TINY = dict(steps=2, batch_size=2, max_new_tokens=8, threads=1, save_every=100)


def test_mean_std_and_summary_by_hand():
    assert mean_std([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1, "values": [0.5]}
    stat = mean_std([0.2, 0.4, 0.9])
    assert stat["mean"] == pytest.approx(0.5)
    assert stat["std"] == pytest.approx(((0.09 + 0.01 + 0.16) / 2) ** 0.5)  # sample std, n - 1
    base = {"new_task": {"accuracy": 0.1, "accuracy_by_group": {"direct": 0.1}},
            "previous_skills": {"accuracy": 1.0}}
    runs = [{"method": m, "seed": s, "new_task": new, "new_task_by_group": {"direct": new}, "previous_skills": prev,
             "train_s": 10.0, "tokens": 100, "peak_mem_mb": 1000.0}
            for m, s, new, prev in [("sft", 0, 0.5, 0.8), ("sft", 1, 0.7, 0.6),
                                    ("sdft", 0, 0.3, 1.0), ("sdft", 1, 0.3, 0.9)]]
    table = summarize(base, runs)
    assert table["sft"]["new_task"]["mean"] == pytest.approx(0.6)
    assert table["sft"]["new_task"]["std"] == pytest.approx(2 ** 0.5 * 0.1)
    assert table["sft"]["change"]["new_task"] == pytest.approx(0.5)
    assert table["sft"]["change"]["previous_skills"] == pytest.approx(-0.3)
    assert table["sdft"]["change"]["previous_skills"] == pytest.approx(-0.05)
    assert table["sdft"]["new_task"]["std"] == 0.0
    text = format_table({"task": "t", "table": table, "seeds": [0, 1], "wall_s": 1.0, "phase_s": {"train": 1.0}})
    assert "60.0 ± 14.1" in text and "-30.0" in text and "+50.0" in text


def test_tiny_compare_end_to_end_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cmp"
    flags = ["--steps", "2", "--batch-size", "2", "--max-new-tokens", "8", "--eval-limit", "4",
             "--eval-max-new-tokens", "8", "--threads", "1", "--quiet"]
    assert main(["compare", "--task", "knowledge", "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "SFT" in printed and "SDFT" in printed and "previous skills" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["n_eval"] == 4 and report["n_probe"] == 4 and report["seeds"] == [0]
    table = report["table"]
    assert set(table) == {"base", "sft", "sdft"}
    for method in ("sft", "sdft"):
        row = table[method]
        for key in ("new_task", "previous_skills"):
            assert 0.0 <= row[key]["mean"] <= 1.0
            assert row["change"][key] == pytest.approx(row[key]["mean"] - table["base"][key]["mean"])
        assert row["tokens"]["mean"] > 0 and row["train_s"]["mean"] > 0 and row["peak_mem_mb"]["mean"] > 0
    assert table["base"]["previous_skills"]["mean"] == 1.0  # the probe holds what the base model gets right
    assert {r["method"] for r in report["runs"]} == {"sft", "sdft"}
    for run in report["runs"]:  # normal run directories, so curves can be re-plotted
        assert len((out / run["run_dir"] / "metrics.jsonl").read_text().splitlines()) == 2
        assert len(run["eval"]["new_task"]["items"]) == 4
    rows = side_by_side(report, "new_task")
    assert len(rows) == 4 and rows[0]["prompt"] == report["base_eval"]["new_task"]["items"][0]["prompt"]
    sdft = next(r for r in report["runs"] if r["method"] == "sdft")["eval"]["new_task"]["items"]
    assert [r["SDFT"] for r in rows] == [i["output"] for i in sdft]
    assert [r["SDFT right"] for r in rows] == [i["correct"] for i in sdft]
    bars = compare_scores(report)
    assert [list(b.y) for b in bars.data] == [[table[m][k]["mean"] * 100 for m in ("base", "sft", "sdft")]
                                             for k in ("new_task", "previous_skills")]
    page = (out / "report.html").read_text()
    assert "Plotly.newPlot" in page and "<table>" in page
    assert "<script src=" not in page and len(page) > 3_000_000  # self-contained: plotly.js inlined
    before = (out / "report.json").read_text()
    assert main(["compare", "--task", "knowledge", "--out", str(out), *flags]) == 2
    assert "already holds a report" in capsys.readouterr().err
    assert (out / "report.json").read_text() == before
    assert main(["compare", "--out", str(tmp_path / "x"), "--data", "d.jsonl"]) == 2  # --eval missing


def test_tiny_continual_retention_matrices(tmp_path):
    config = Config().replace(**{**TINY, "steps": 1})
    report = continual(["knowledge", "tooluse"], config, out_dir=tmp_path / "seq", eval_limit=2,
                       eval_max_new_tokens=4, progress=False, log=lambda _: None)
    assert report["columns"] == ["knowledge", "tooluse", "skills_probe"]
    assert report["stages"] == ["base", "after knowledge", "after tooluse"]
    for method in ("sft", "sdft"):
        matrix = report["matrices"][method]
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
        assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
        assert matrix[0] == report["matrices"]["sft"][0]  # one base row, shared
    assert matrix[0][2] == 1.0
    assert (tmp_path / "seq" / "sdft-2-tooluse" / "metrics.jsonl").is_file()
    assert "Plotly.newPlot" in (tmp_path / "seq" / "report.html").read_text()
