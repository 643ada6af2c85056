"""QLoRA executed: the embedded model in 4-bit NF4 on the CPU (bitsandbytes' CPU backend), through
the teacher views, training with the EMA teacher, a kill, --resume, the saved adapter and generate."""

import importlib.util
import os
import signal
import subprocess
import sys

import pytest
import torch

if importlib.util.find_spec("bitsandbytes") is None:  # not imported here: sdft_kit imports it quietly when asked
    pytest.skip("bitsandbytes is not installed (the qlora extra)", allow_module_level=True)

from sdft_kit import Config, ModelConfig, Trainer, add_lora, load_model, make_teacher  # noqa: E402
from sdft_kit.batch import completion_logits, demonstration_batch  # noqa: E402
from sdft_kit.config import TEACHER_KINDS, TeacherConfig  # noqa: E402
from sdft_kit.demos import student_prompt  # noqa: E402
from sdft_kit.models import lora_parameters  # noqa: E402
from sdft_kit.rollout import RolloutConfig, rollout  # noqa: E402

FOUR_BIT = ModelConfig(load_in_4bit=True)


def _four_bit_weights(model) -> dict[str, torch.Tensor]:
    from bitsandbytes.nn import Linear4bit

    return {name: module.weight for name, module in model.named_modules() if isinstance(module, Linear4bit)}


def test_4bit_teacher_views_share_the_one_base_and_training_leaves_it_untouched(demo_examples):
    torch.set_num_threads(1)
    base, tokenizer = load_model("embedded", FOUR_BIT)
    model = add_lora(base, FOUR_BIT)
    packed = _four_bit_weights(model)
    assert len(packed) == 210  # q, k, v, o, gate, up, down in 30 layers; the tied head stays float
    pointers = {name: w.data_ptr() for name, w in packed.items()}
    saved = {name: w.detach().clone() for name, w in packed.items()}
    teachers = {kind: make_teacher(model, TeacherConfig(teacher=kind, ema_rate=0.5)) for kind in TEACHER_KINDS}
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(0.02)
    batch = demonstration_batch(tokenizer, [student_prompt(tokenizer, ex) for ex in demo_examples[:2]],
                                [ex.demonstration for ex in demo_examples[:2]], torch.device("cpu"))
    seen = {}
    for kind, teacher in teachers.items():
        with torch.no_grad(), teacher.view() as view:  # eval mode, no gradient: as the trainer's teacher pass
            in_view = _four_bit_weights(view)
            assert all(in_view[n] is w for n, w in packed.items()), kind  # the student's own tensors...
            assert {n: w.data_ptr() for n, w in in_view.items()} == pointers, kind  # ...on the same storage
            seen[kind] = completion_logits(view.eval(), batch.prompt_ids, batch.prompt_mask, batch)
        # and still there after the pass: no layer was repacked into a copy (bitsandbytes >= 0.49 on AVX512-BF16)
        assert {n: w.data_ptr() for n, w in _four_bit_weights(model).items()} == pointers, kind
    assert not torch.allclose(seen["base"], seen["live"]) and not torch.allclose(seen["ema"], seen["live"])
    # rollouts never merge LoRA into 4-bit weights (that would re-quantize them): the base stays bit-exact
    rollout(model, tokenizer, [student_prompt(tokenizer, demo_examples[0])], RolloutConfig(max_new_tokens=4))
    config = Config().replace(load_in_4bit=True, steps=2, batch_size=2, max_new_tokens=8, teacher="ema", threads=1)
    records = Trainer(config, demo_examples, model=model, tokenizer=tokenizer).train(progress=False)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    for name, weight in _four_bit_weights(model).items():
        assert weight.data_ptr() == pointers[name] and torch.equal(weight, saved[name]), name


def test_4bit_gradients_are_the_same_after_a_teacher_pass_in_eval_mode(demo_examples):
    """A no-grad eval pass (the teacher's, a rollout's) must not change how the student's gradients flow
    through the 4-bit base: bitsandbytes >= 0.49 repacks the weights there for a kernel without backward."""
    torch.set_num_threads(1)
    model = add_lora(load_model("embedded", FOUR_BIT)[0], FOUR_BIT)
    with torch.no_grad():
        for p in lora_parameters(model).values():
            p.add_(0.01)  # B = 0 at first: without this no gradient reaches the lower layers' A matrices
    ids = torch.tensor([[1, 504, 2365, 6354, 16438, 30, 10, 24, 1023, 3]])

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {name: p.grad.clone() for name, p in lora_parameters(model).items()}

    before = gradients()
    with torch.no_grad():
        model.eval()(ids)  # the teacher's kind of pass
    after = gradients()
    assert len(before) == 420 and all(before[name].abs().sum() > 0 for name in before)  # A and B of 210 layers
    assert all(torch.equal(before[name], after[name]) for name in before), \
        max(((before[n] - after[n]).norm() / before[n].norm()).item() for n in before)


def _cli(*args):
    return [sys.executable, "-m", "sdft_kit.cli", *args]


def test_a_4bit_run_killed_mid_way_resumes_then_its_adapter_generates(tmp_path):
    out = tmp_path / "run"
    train = _cli("train", "--data", "sdft_kit/samples/demo.jsonl", "--out", str(out), "--load-in-4bit",
                 "--steps", "3", "--save-every", "1", "--batch-size", "2", "--max-new-tokens", "8", "--skip-check",
                 "--threads", "1")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(train, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:  # kill -9 once step 2 is reported (and so checkpointed)
        if line.startswith("step   2/3"):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=600)
    assert process.returncode == -signal.SIGKILL
    resumed = subprocess.run(_cli("train", "--data", "sdft_kit/samples/demo.jsonl", "--out", str(out), "--resume"),
                             capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for noise in ("kernels-community", "publisher trust", "autograd kernel was not registered"):
        assert noise not in resumed.stdout + resumed.stderr, noise  # a 4-bit run prints no library noise
    assert "step   3/3" in resumed.stdout and "step   1/3" not in resumed.stdout
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(steps) == 3
    assert (out / "adapter" / "adapter_config.json").is_file()
    answer = subprocess.run(_cli("generate", "--adapter", str(out / "adapter"), "--prompt", "What is 7 plus 5?",
                                 "--max-new-tokens", "6"), capture_output=True, text=True, env=env, timeout=600)
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]
