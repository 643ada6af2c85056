"""Sharing a run: the model card, the exported adapter, the merged 16-bit model and `push`, offline."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sdft_kit.config import Config, ModelConfig
from sdft_kit.models import EMBEDDED_HUB_ID, add_lora, load_adapter, load_model

PROMPT = "What is the capital of France?"


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sdft_kit.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def _record(step: int, loss: float) -> dict:
    return {"step": step, "steps": 2, "method": "sdft", "loss": loss, "mean_kl": loss * 2, "lr": 1e-3, "grad_norm": 1.0,
            "is_weight": None, "tokens": 10, "seconds": {"total": 1.0}, "elapsed_s": 3.0 * step,
            "peak_mem_mb": 1000.0 + step}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it, with a LoRA adapter that really changes the model (random B),
    a 4-bit config (the merged export must not merge into 4-bit weights), step records and a teacher check."""
    run = tmp_path_factory.mktemp("export") / "my-run"
    config = Config().replace(steps=2, teacher="ema", template="system", vocab="topk", topk=20, load_in_4bit=True,
                              lora_r=4)
    base, tokenizer = load_model("embedded")
    model = add_lora(base, config.model, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    config.save(run / "config.yaml")
    (run / "metrics.jsonl").write_text("".join(json.dumps(_record(s, l)) + "\n" for s, l in ((1, 0.75), (2, 0.25))))
    (run / "teacher_check.json").write_text(json.dumps({
        "records": 8, "best": "system", "verdict": "weak", "advice": ["Try a larger model."],
        "results": [{"template": "system", "records": 8, "student_logprob": -1.5, "teacher_logprob": -1.25,
                     "teacher_better": 6}]}))
    (run / "data.jsonl").write_text('{"prompt": "q", "demonstration": "a"}\n' * 5)
    return run


def test_saved_adapter_names_a_local_path_and_export_names_the_hub_model(run_dir, tmp_path):
    saved = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"].endswith("smollm2-135m-instruct")  # training keeps the local cache
    out = tmp_path / "shared"
    result = _run("export", "--run", str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID
    assert Config.load(out / "sdft_kit_config.yaml").teacher.template == "system"
    card = (out / "README.md").read_text()
    assert f"base_model: {EMBEDDED_HUB_ID}" in card and "GGUF build" in card
    assert "- sdft-kit" in card and "library_name: peft" in card
    assert "5 demonstrations" in card  # the run's data.jsonl
    assert "| teacher | ema (of the weights, rate 0.01, rank 2 x r) |" in card
    assert "| teacher template | system, demonstrations: own |" in card
    assert "top-20 + tail vocabulary" in card and "| LoRA | r 4, alpha 32, on all-linear |" in card
    assert "0.7500 at step 1 → 0.2500 at step 2" in card and "| peak memory | 1002 MB |" in card
    assert "**WEAK** (template 'system', 8 records)" in card and "from -1.50 to -1.25, better on 6/8" in card
    assert "AutoPeftModelForCausalLM.from_pretrained" in card
    again = _run("export", "--run", str(run_dir), "--out", str(out))
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_the_hub_named_adapter_still_loads_the_local_weights_offline(run_dir, tmp_path):
    from sdft_kit.export import export_adapter

    out = export_adapter(run_dir, tmp_path / "shared")
    inputs = torch.tensor([[1, 504, 3458, 282, 4649, 47]])
    original, _ = load_adapter(run_dir / "adapter", ModelConfig(model="embedded"))
    shared, _ = load_adapter(out, ModelConfig(model=EMBEDDED_HUB_ID))  # HF_HUB_OFFLINE=1, no Hub cache here
    with torch.no_grad():
        assert torch.equal(original(inputs).logits, shared(inputs).logits)
    answer = _run("generate", "--adapter", str(out), "--model", EMBEDDED_HUB_ID, "--prompt", PROMPT,
                  "--max-new-tokens", "4", env={"HF_HUB_OFFLINE": "1"})
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()


def test_merged_export_is_16_bit_and_holds_the_adapter(run_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    result = _run("export", "--run", str(run_dir), "--out", str(out), "--merged", "--dtype", "float16")
    assert result.returncode == 0, result.stderr  # a 4-bit run's config, merged on this CPU into 16 bits
    with safe_open(out / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"F16"}
    assert "library_name: transformers" in (out / "README.md").read_text()
    inputs = torch.tensor([[1, 504, 3458, 282, 4649, 47]])
    adapted, _ = load_adapter(run_dir / "adapter", ModelConfig(model="embedded"))
    with torch.no_grad():
        target = adapted(inputs).logits
        with adapted.disable_adapter():
            base = adapted(inputs).logits
        merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(inputs).logits
    # the merged model is the adapted one up to fp16 rounding, far closer to it than the base is
    assert (merged - target).abs().max() < 0.1 * (base - target).abs().max()
    assert _run("export", "--run", str(run_dir), "--out", str(tmp_path / "m32"), "--merged",
                "--dtype", "float32").returncode == 2


def test_push_offline_is_one_clear_line(run_dir, tmp_path):
    offline = _run("push", "--adapter", str(run_dir / "adapter"), "--repo", "me/my-adapter", env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr
    assert len(offline.stderr.strip().splitlines()) == 1 and "Traceback" not in offline.stderr
    # a Hub that cannot be reached (a closed local port): the HTTP client's own error, in one line
    unreachable = _run("push", "--adapter", str(run_dir / "adapter"), "--repo", "me/my-adapter",
                       env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert unreachable.returncode == 2 and "cannot push to me/my-adapter" in unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1


def test_push_creates_the_repo_and_uploads_the_folder_with_its_card(run_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    from sdft_kit import export

    calls = []

    class FakeApi:  # stands in for the Hub's API: records what push asks of it
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in folder_path.iterdir())))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1",
                                              commit_message="", commit_description="", oid="1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    url = export.push(run / "adapter", "me/my-adapter", private=True)
    assert calls[1] == ("create_repo", "me/my-adapter", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][0] == "upload_folder" and {"README.md", "adapter_config.json",
                                               "adapter_model.safetensors"} <= set(calls[2][2])
    assert url == "https://huggingface.co/me/my-adapter"
    assert export.has_our_card(run / "adapter")  # peft's blank card was replaced by the run's
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_the_card_shows_the_forgetting_monitors_steps_and_names_the_chosen_one(tmp_path):
    from sdft_kit.export import model_card

    def scored(step, new, prior):
        return {"step": step, "new_task": new, "prior_skills": prior, "new_task_measure": "accuracy", "n_prior": 31,
                "n_new": 20, "seconds": 4.0 + step}

    run = tmp_path / "run"
    run.mkdir()
    Config().replace(steps=4, monitor_every=2, monitor_new_task="knowledge", monitor_tolerance=0.1).save(
        run / "config.yaml")
    records = [_record(step, 1.0 / step) for step in (1, 2, 3, 4)]
    records[0]["monitor_start"], records[1]["monitor"], records[3]["monitor"] = \
        scored(0, 0.05, 1.0), scored(2, 0.25, 0.9), scored(4, 0.5, 0.6)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    card = str(model_card(run))
    assert "## Forgetting monitor" in card and "accuracy on 20 items of knowledge" in card
    assert "every 2 steps" in card and "(median 6.0 s each)" in card
    assert "| 2 | 0.250 | 90.0% | yes | not kept |" in card  # this run kept the final adapter only
    assert "| 4 | 0.500 | 60.0% | yes | `adapter/` (the final adapter) |" in card
    assert "**Chosen: step 2** (not kept)" in card and "at most 10 points below the start's (100.0%" in card
    assert "--keep-checkpoints tradeoff` keeps every step of the front" in card
    (run / "metrics.jsonl").write_text("".join(json.dumps(_record(step, 0.5)) + "\n" for step in (1, 2)))
    assert "Forgetting monitor" not in str(model_card(run))  # not monitored: no section
