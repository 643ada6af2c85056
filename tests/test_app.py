"""The web app's handlers as plain functions (sdft_kit.app_logic): no gradio, no browser."""

import json
import time
import zipfile

import pytest

from sdft_kit import app_logic as logic
from sdft_kit.cli import build_config, make_parser
from sdft_kit.config import Config
from sdft_kit.data import DataError

SAMPLE = logic.SAMPLES_DIR / "demo.jsonl"
TINY = dict(steps=2, batch_size=2, max_new_tokens=8, threads=1, teacher="base")


def test_upload_bytes_parse_as_jsonl_or_csv():
    jsonl = logic.parse_upload(SAMPLE.read_bytes())
    csv = logic.parse_upload((logic.SAMPLES_DIR / "demo.csv").read_bytes())
    assert len(jsonl) == 24 and len(csv) == 8
    assert jsonl[1].prompt == "What is 7 plus 5?" and jsonl[1].demonstration == "Answer: 7 plus 5 is 12."
    assert csv[0].prompt == "What color is the sky on a clear day?"
    # a UTF-8 BOM (Excel) and CRLF line ends are fine
    assert len(logic.parse_upload(b"\xef\xbb\xbfprompt,demonstration\r\nHi?,Hello.\r\n")) == 1


@pytest.mark.parametrize("data, expected", [
    (b"", "the file is empty"),
    (b"  \n\n", "the file is empty"),
    (b"PK\x03\x04\x00\x00binary", "binary file"),
    (b"question,answer\nHi?,Hello.\n", "line 1: CSV header has columns 'question', 'answer'"),
    (b'{"prompt": "a", "demonstration": "b"}\n{"prompt": "c"}\n', "line 2: field 'demonstration' is missing"),
    (b'{"prompt": "a", "demonstration": "b"}\n{"prompt": \n', "line 2: invalid JSON"),
    (b'{"prompt": "a", "demonstration": ""}\n', "line 1: field 'demonstration' is empty"),
    (b"prompt,demonstration\nHi?,caf\xe9\n", "line 2: byte 0xe9 is not valid UTF-8"),
    (b"x" * 2048, "2.0 KB is over the 1.0 KB limit"),
])
def test_bad_uploads_give_one_line_naming_line_and_field(data, expected):
    with pytest.raises(DataError) as error:
        logic.parse_upload(data, max_bytes=1024)
    message = str(error.value)
    assert expected in message and message.startswith("uploaded file")
    assert "/tmp" not in message and "upload." not in message  # our temporary file is never named


def test_preview_shows_the_prompts_as_the_model_sees_them():
    examples = logic.parse_upload(SAMPLE.read_bytes())
    tokenizer = logic.load_tokenizer("embedded")
    rows = logic.preview_rows(examples, tokenizer, n=2)
    assert len(rows) == 2
    row = rows[1]
    assert "What is 7 plus 5?" in row["student_prompt"] and "Answer: 7 plus 5 is 12." not in row["student_prompt"]
    assert "<|im_start|>assistant" in row["student_prompt"]  # the chat template is applied
    assert "This is an example for a response to the question:\nAnswer: 7 plus 5 is 12." in row["teacher_prompt"]
    assert row["student_tokens"] == len(tokenizer(row["student_prompt"], add_special_tokens=False).input_ids)
    assert row["teacher_tokens"] > row["student_tokens"] + row["demonstration_tokens"]


def test_knobs_make_a_config_and_the_command_rebuilds_it():
    config = logic.make_config(model="embedded", load_in_4bit=None, method="sft", steps=7, learning_rate=1e-3,
                               lora_r=8, max_new_tokens=32, batch_size=2, teacher="base", divergence="reverse KL",
                               topk=50, threads=1)
    assert (config.train.method, config.train.steps, config.model.lora_r) == ("sft", 7, 8)
    assert (config.loss.alpha, config.loss.vocab, config.loss.topk) == (1.0, "topk", 50)
    assert logic.make_config(topk=0).loss.vocab == "full"
    with pytest.raises(ValueError, match="steps must be >= 1"):
        logic.make_config(steps=0)
    with pytest.raises(ValueError, match="divergence must be one of"):
        logic.make_config(divergence="L2")
    config = config.replace(template="Q: {prompt} -- e.g. {demonstration}", load_in_4bit=False)
    command = logic.cli_command(config, data="my data.jsonl", out="runs/x")
    assert command.startswith("sdft-kit train --data 'my data.jsonl' --out runs/x ")
    assert "--no-load-in-4bit" in command and "--lora-r 8" in command and "--ema-rate" not in command
    import shlex

    args = make_parser().parse_args(shlex.split(command)[1:])
    assert build_config(args).to_dict() == config.to_dict()
    assert logic.cli_command(Config()) == "sdft-kit train --data demos.jsonl --out runs/my-run"


def test_status_times_are_formatted_like_a_clock():
    assert [logic.format_seconds(s) for s in (0, 42, 70, 3725)] == ["0:00", "0:42", "1:10", "1:02:05"]


def _wait_for(condition, timeout=240):
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.2)


def test_worker_trains_stops_resumes_and_exports(tmp_path):
    examples = logic.parse_upload(SAMPLE.read_bytes())
    worker = logic.TrainingWorker(tmp_path / "runs")
    assert worker.status().text == "no training yet"
    run_dir = worker.start(Config().replace(**{**TINY, "steps": 20}), examples)
    with pytest.raises(logic.BusyError, match="already in progress"):  # one training at a time
        logic.TrainingWorker(tmp_path / "other").start(Config().replace(**TINY), examples)
    _wait_for(lambda: worker.records())
    worker.stop()
    worker.wait()
    status = worker.status()
    assert status.state == "stopped" and 1 <= status.step < 20, status.text
    assert f"step {status.step}/20, elapsed " in status.text and " < remaining " in status.text
    assert (run_dir / "checkpoint" / "trainer_state.json").is_file() and (run_dir / "adapter").is_dir()
    assert len(logic.load_examples(run_dir / "data.jsonl")) == 24  # the run keeps its own data for resuming
    # the teacher check ran before SDFT training: saved in the run and shown under the status line
    assert json.loads((run_dir / "teacher_check.json").read_text())["verdict"] in ("ready", "weak", "not ready")
    assert status.teacher_check.startswith("Teacher check (8 records")
    assert status.markdown == status.text + "\n\n" + status.teacher_check

    stopped_at = status.step
    worker.resume(run_dir, steps=stopped_at + 1)
    worker.wait()
    status = worker.status()
    assert status.state == "done" and status.text.startswith(f"step {stopped_at + 1}/{stopped_at + 1}, elapsed ")
    assert [r["step"] for r in worker.records()] == list(range(1, stopped_at + 2))
    assert "remaining 0:00" in status.text and "loss" in status.text and "mean KL" in status.text
    assert logic.list_runs(tmp_path / "runs") == [run_dir]

    archive = logic.export_adapter_zip(run_dir, tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            "adapter/sdft_kit_config.yaml"} <= set(names)

    answers = logic.compare_answers("What is 7 plus 5?", "Answer: 7 plus 5 is 12.", run_dir=run_dir,
                                    max_new_tokens=6)
    assert all(isinstance(answers[k], str) and answers[k] for k in ("base", "trained", "teacher"))
    assert logic.compare_answers("Hi?", "", max_new_tokens=4)["trained"] is None


def test_a_failed_start_is_reported_and_frees_the_worker(tmp_path):
    examples = logic.parse_upload(SAMPLE.read_bytes())
    worker = logic.TrainingWorker(tmp_path)
    worker.start(Config().replace(model=str(tmp_path / "no-such-model"), **TINY), examples)
    worker.wait()
    status = worker.status()
    assert status.state == "failed" and "Could not load model" in status.text
    with pytest.raises(DataError, match="no data yet"):
        worker.start(Config(), [])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        worker.resume(status.run_dir)
    assert logic._ONE_TRAINING.acquire(blocking=False)  # the lock was released
    logic._ONE_TRAINING.release()


def test_merged_export_matches_base_plus_adapter(tmp_path):
    import torch
    from safetensors.torch import load

    examples = logic.parse_upload(SAMPLE.read_bytes())
    worker = logic.TrainingWorker(tmp_path / "runs")
    run_dir = worker.start(Config().replace(**{**TINY, "steps": 1, "learning_rate": 1e-2}), examples)
    worker.wait()
    assert worker.status().state == "done"
    archive = zipfile.ZipFile(logic.export_merged_zip(run_dir, tmp_path))
    assert "merged/config.json" in archive.namelist() and "merged/tokenizer_config.json" in archive.namelist()
    merged = load(archive.read("merged/model.safetensors"))
    from sdft_kit.models import load_adapter, load_model

    model, _ = load_adapter(run_dir / "adapter")
    expected = model.merge_and_unload().state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(merged[name], expected[name], atol=1e-6)
    base, _ = load_model("embedded")
    assert not torch.allclose(merged[name], base.state_dict()[name], atol=1e-6)  # the adapter is in there
    with pytest.raises(ValueError, match="4-bit"):
        (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(
            "load_in_4bit: null", "load_in_4bit: true"))
        logic.export_merged_zip(run_dir, tmp_path)
