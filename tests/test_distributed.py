"""Two CPU processes over gloo (accelerate launch): the same SFT steps as one process on the
whole batch, an SDFT run with identical adapters and EMA teachers everywhere, and a killed
two-process run resumed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytest.importorskip("accelerate")

DATA = "sdft_kit/samples/demo.jsonl"
SMALL = ["--steps", "6", "--max-new-tokens", "8", "--skip-check", "--threads", "1", "--seed", "5"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def launch(*args: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(29500 + os.getpid() % 1000), *args]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_processes_take_the_steps_one_process_takes_on_the_whole_batch_and_resume(tmp_path):
    one = tmp_path / "one"
    single = subprocess.run([sys.executable, "-m", "sdft_kit.cli", "train", "--data", DATA, "--out", str(one),
                             "--method", "sft", "--batch-size", "4", *SMALL], capture_output=True, text=True,
                            env=ENV, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]

    two = tmp_path / "two"
    train = launch("-m", "sdft_kit.cli", "train", "--data", DATA, "--out", str(two), "--method", "sft",
                   "--batch-size", "2", "--save-every", "1", *SMALL)
    process = subprocess.Popen(train, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    printed = []
    for line in process.stdout:  # kill -9 every process once step 2 is reported (and so checkpointed)
        printed.append(line)
        if line.startswith("step   2/6"):
            for child in psutil.Process(process.pid).children(recursive=True):  # the workers, then the launcher
                child.kill()
            process.kill()
            break
    process.wait(timeout=900)
    assert any(line.startswith("step   2/6") for line in printed), "".join(printed)[-3000:]
    resumed = subprocess.run(launch("-m", "sdft_kit.cli", "train", "--data", DATA, "--out", str(two), "--resume"),
                             capture_output=True, text=True, env=ENV, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert "resuming at step 0" not in resumed.stdout and "resuming at step 6" not in resumed.stdout
    assert resumed.stdout.count("step   6/6") == 1  # process 0 alone reports

    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # process 0 alone writes the run directory
    assert all(r["processes"] == 2 and r["global_batch"] == 4 for r in records)
    assert losses(two) == pytest.approx(losses(one), rel=1e-4, abs=1e-5)
    assert (two / "adapter" / "adapter_model.safetensors").is_file()


def test_sdft_over_two_processes_keeps_adapters_and_ema_teachers_identical(tmp_path):
    out = tmp_path / "result.json"
    run = subprocess.run(launch(str(Path(__file__).with_name("distributed_worker.py")), DATA, str(out)),
                         capture_output=True, text=True, env=ENV, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["moved"]
    assert result["teacher_size"] > 0
    assert result["same_weights"] and result["same_teacher"]  # bit-identical on both processes
    assert all(r["global_batch"] == 2 for r in result["records"])
