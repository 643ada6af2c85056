"""A short SDFT run with rollout.engine: vllm (needs the vLLM extra; see test_vllm_engine.py)."""

import json
import math

import pytest

from sdft_kit import Config, Trainer

from test_vllm_engine import require_vllm


pytestmark = pytest.mark.usefixtures("one_thread")  # decoding on a shared 2-core CPU: one thread is faster

def test_a_2_step_sdft_run_with_vllm_rollouts_writes_finite_records_and_an_adapter(demo_examples, tmp_path,
                                                                                     monkeypatch, capsys):
    require_vllm()
    monkeypatch.delenv("SDFT_KIT_AUTO_ENGINE")  # the default engine, 'auto', as a user with vLLM installed gets it
    config = Config().replace(vllm_dtype="float32", steps=2, batch_size=2, max_new_tokens=8, teacher="base",
                              vocab="topk", topk=20, learning_rate=1e-3)
    Trainer(config, demo_examples, out_dir=tmp_path / "run").train(progress=False)
    assert "rollout engine 'auto' -> vllm (vLLM is installed)" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["engine"] == "vllm"
        assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) and record["tokens"] > 0
        # fp32 vLLM samples what the student would: weights of 1, also after the first step's sync
        assert abs(record["is_weight"] - 1) < 1e-3  # from stale weights: off by ~0.05 or more
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
