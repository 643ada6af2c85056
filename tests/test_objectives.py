"""Tests for sdft_kit.objectives: the objectives on one rollout, checked against the training loss itself."""

import json
import math

import pytest
import torch

from sdft_kit.cli import main
from sdft_kit.config import Config
from sdft_kit.models import lora_parameters
from sdft_kit.objectives import DIVERGENCES, objectives_on_example
from sdft_kit.teachers import make_teacher
from sdft_kit.update import sdft_objective

torch.set_num_threads(1)


def test_the_papers_objective_is_the_training_loss_and_the_others_compare_to_it(lora_model, demo_examples):
    model, tok = lora_model
    comparison, batch = objectives_on_example(model, tok, demo_examples[0], max_new_tokens=16, topk=20, seed=1)
    assert len(comparison.tokens) > 5 and comparison.counted[:3] == [False] * 3 and all(comparison.counted[3:])
    assert all(p.grad is None for p in lora_parameters(model).values())  # .grad untouched: autograd.grad only

    # forward KL (alpha 0) over the full vocabulary = what training computes and backpropagates on the same batch
    config = Config().replace(teacher="base", topk=20, skip_first=3)  # objectives_on_example's skip_first
    training = sdft_objective(model, make_teacher(model), batch, config).student.loss
    training.backward()
    gradient = torch.cat([p.grad.flatten() for p in lora_parameters(model).values()]).double()
    paper = comparison.get("forward KL", "full")
    assert paper.loss == pytest.approx(training.item(), rel=1e-5)
    assert paper.grad_norm == pytest.approx(gradient.norm().item(), rel=1e-4)
    assert paper.cosine == pytest.approx(1.0, abs=1e-5)
    assert paper.tags == ["paper", "ours"] and comparison.get("JSD(0.5)", "topk").tags == ["TRL default"]

    assert len(comparison.results) == 9
    for divergence in DIVERGENCES:
        full = comparison.get(divergence, "full")
        for vocab in ("topk", "sampled"):
            coarse = comparison.get(divergence, vocab)
            # lumping tokens into buckets never raises a divergence (data processing inequality)
            assert coarse.loss <= full.loss + 1e-6, (divergence, vocab)
        for r in (full, *(comparison.get(divergence, v) for v in ("topk", "sampled"))):
            assert math.isfinite(r.loss) and r.loss >= 0 and r.grad_norm > 0 and -1.0 <= r.cosine <= 1.0 + 1e-6
            assert r.push[:3] == [0.0, 0.0, 0.0]  # skipped tokens get no push
            assert r.hardest and all(h["position"] >= 3 for h in r.hardest)
            assert r.hardest[0]["push"] == pytest.approx(max(r.push))
    # the top-20 + tail keeps most of the teacher's mass: its gradient is close to the full one
    assert comparison.get("forward KL", "topk").cosine > 0.5
    table = comparison.table()
    assert table.count("\n") >= 10 and "[paper, ours]" in table and "[TRL default]" in table
    assert len(comparison.figure().data[0].z) == 9


def test_cli_objectives_prints_the_table_and_saves(tmp_path, capsys):
    assert main(["objectives", "--max-new-tokens", "10", "--topk", "10", "--example", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "What is the capital of France?" in printed and "forward KL, full" in printed and "[paper, ours]" in printed
    saved = json.loads((tmp_path / "objectives.json").read_text())
    assert len(saved["results"]) == 9 and saved["topk"] == 10
    assert "Plotly.newPlot" in (tmp_path / "objectives.html").read_text()
    assert main(["objectives", "--example", "99"]) == 2
    assert "--example must be 0 to 23" in capsys.readouterr().err
