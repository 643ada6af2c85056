"""Two CPU processes over gloo (accelerate launch): the same SFT steps as one process on the
whole batch, an SDFT run with identical adapters and EMA teachers everywhere, a killed
two-process run resumed, Ctrl-C and a killed launcher, and `--cpu` with several processes refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("accelerate")

DATA = "sdft_kit/samples/demo.jsonl"
SMALL = ["--steps", "6", "--max-new-tokens", "8", "--skip-check", "--threads", "1", "--seed", "5"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def launch(*args: str, processes: int = 2, kind: str = "--multi_gpu") -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", kind, "--num_processes", str(processes),
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


def _read_until(process: subprocess.Popen, start: str, printed: list[str]) -> None:
    for line in process.stdout:
        printed.append(line)
        if line.startswith(start):
            return
    raise AssertionError("the run ended before printing " + repr(start) + ":\n" + "".join(printed)[-3000:])


def _records(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_speaks_once_and_a_killed_launcher_takes_its_processes_with_it(tmp_path, tiny_llama_dir):
    from sdft_kit.checkpoint import newest_checkpoint

    run = tmp_path / "run"
    train = ["-m", "sdft_kit.cli", "train", "--data", DATA, "--out", str(run), "--model", str(tiny_llama_dir),
             "--method", "sft", "--batch-size", "2", "--max-new-tokens", "8", "--skip-check", "--threads", "1",
             "--report-to", "none"]
    # Ctrl-C in a terminal reaches the launcher, which passes SIGINT on: one process stops, one line says so.
    first = subprocess.Popen(launch(*train, "--steps", "500"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=ENV)
    printed: list[str] = []
    _read_until(first, "step   2/500", printed)
    first.send_signal(signal.SIGINT)
    printed += first.stdout.readlines()
    assert first.wait(timeout=300) == 130
    step = newest_checkpoint(run)[0]
    stopped = [line for line in printed if line.startswith("stopped after step")]
    assert stopped == [f"stopped after step {step}/500: the checkpoint of step {step} is in {run / 'checkpoint'}; "
                       "continue with --resume\n"], "".join(printed)[-3000:]
    assert not any("nothing is kept" in line or line.startswith("interrupted") for line in printed)
    assert _records(run) == list(range(1, step + 1))

    # kill -9 of the launcher: Linux sends both training processes SIGTERM (follow_launcher); they finish the
    # step under way, checkpoint it and end, instead of training on and holding the run's lock.
    second = subprocess.Popen(launch(*train, "--resume"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=ENV)
    _read_until(second, f"step {step + 2:>3}/500", printed)
    workers = psutil.Process(second.pid).children(recursive=True)
    assert len(workers) == 2, workers
    killed_at = time.monotonic()
    second.kill()
    second.wait()
    gone, alive = psutil.wait_procs(workers, timeout=120)
    for worker in alive:
        worker.kill()
    assert not alive, f"{len(alive)} training processes outlived their launcher by 120 s"
    print(f"training processes ended {time.monotonic() - killed_at:.1f} s after the launcher was killed")
    step = newest_checkpoint(run)[0]
    assert _records(run) == list(range(1, step + 1))  # every completed step recorded and checkpointed

    resumed = subprocess.run(launch(*train, "--resume", "--steps", str(step + 1)), capture_output=True, text=True,
                             env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert f"resuming at step {step}\n" in resumed.stdout
    assert _records(run) == list(range(1, step + 2))


def test_cpu_launch_of_several_processes_is_refused_with_the_command_that_starts_them(tmp_path, tiny_llama_dir):
    run = tmp_path / "run"
    refused = subprocess.run(launch("-m", "sdft_kit.cli", "train", "--data", DATA, "--out", str(run), "--model",
                                    str(tiny_llama_dir), "--steps", "1", "--skip-check", "--report-to", "none",
                                    kind="--cpu"), capture_output=True, text=True, env=ENV, timeout=600)
    assert refused.returncode != 0
    assert ("error: `accelerate launch --cpu` starts one training process, however many --num_processes asks for"
            in refused.stderr), refused.stderr[-3000:]
    assert "use `accelerate launch --multi_gpu --num_processes N ...`" in refused.stderr
    assert not run.exists()  # refused before the run directory was made
