"""What the web app does, as plain functions and one worker class (no gradio here).

    parse_upload(bytes)          uploaded JSONL/CSV bytes -> examples, or a DataError naming line and field
    preview_rows(examples, ...)  the first examples exactly as the model sees them, with token counts
    cli_command(config, ...)     the `sdft-kit train ...` command that runs the same training
    TrainingWorker               runs Trainer.steps() in a background thread; stop, resume, status line
    export_adapter_zip(...)      the run's adapter as a zip (and export_merged_zip: base + adapter merged)
    compare_answers(...)         one prompt answered by the base model, the trained adapter and the teacher

`app.py` is the thin gradio front end over these; tests call them directly.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from .checkpoint import mark_run
from .config import Config, fields_by_section, flag
from .data import SAMPLE_DATA, SAMPLES_DIR, DataError, Example, load_examples
from .demos import DemoSelector, student_prompt, teacher_prompt
from .records import StepRecord, load_records

SAMPLES = {"demo.jsonl (24 short Q&A)": SAMPLE_DATA, "demo.csv (same, as CSV)": SAMPLES_DIR / "demo.csv"}
UPLOAD_NAME = "uploaded file"
# Divergence choices shown in the app, as the loss's alpha (see LossConfig).
DIVERGENCES = {"forward KL (paper)": 0.0, "JSD (alpha 0.5)": 0.5, "reverse KL": 1.0}

# One training at a time in this process, whichever worker or browser session asks.
_ONE_TRAINING = threading.Lock()


class BusyError(RuntimeError):
    """A training run is already going on."""


# -- data ------------------------------------------------------------------------------------
def parse_upload(data: bytes, max_bytes: int = 20 * 2**20) -> list[Example]:
    """Examples from the bytes of an uploaded JSONL or CSV file; raises DataError with the line and field.

    The bytes are only parsed: the uploader's file name is never used (not as a path, not
    even for the type). JSONL is recognised by a first character '{', anything else is read as CSV.
    """
    if len(data) > max_bytes:
        raise DataError(f"{UPLOAD_NAME}: {_size(len(data))} is over the {_size(max_bytes)} limit. "
                        "Upload a smaller file (or train from the CLI).")
    if not data.strip():
        raise DataError(f"{UPLOAD_NAME}: the file is empty. Upload a JSONL or CSV file of prompt/demonstration records.")
    if b"\x00" in data[:8192]:
        raise DataError(f"{UPLOAD_NAME}: this looks like a binary file, not text. Upload a JSONL or CSV file "
                        "(UTF-8 text, one example per line or row).")
    kind = "jsonl" if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"
    with tempfile.TemporaryDirectory(prefix="sdft-kit-upload-") as folder:
        path = Path(folder) / f"upload.{kind}"  # our own name: load_examples picks the parser by suffix
        path.write_bytes(data)
        try:
            examples = load_examples(path)
        except DataError as error:  # name the upload, not our temporary file
            message = str(error).replace(str(path), f"{UPLOAD_NAME} ({kind.upper()})")
            raise DataError(message) from None
    return [replace(ex, source="line " + ex.source.rsplit(":", 1)[-1]) for ex in examples]


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def save_examples(examples: list[Example], path: Path) -> Path:
    """Write examples as JSONL that load_examples reads back (the run's own copy of its data)."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"prompt": list(ex.messages), "demonstration": ex.demonstration}) + "\n")
    return path


_tokenizers: dict = {}


def load_tokenizer(model: str):
    """The tokenizer alone (cached), for previews; never runs remote code."""
    if model not in _tokenizers:
        from transformers import AutoTokenizer

        from .models import model_path

        try:
            _tokenizers[model] = AutoTokenizer.from_pretrained(model_path(model), trust_remote_code=False)
        except OSError as err:
            raise RuntimeError(f"Could not load the tokenizer of {model!r} ({err}). Use 'embedded', a local folder "
                               "or a Hugging Face id that is cached or reachable.") from None
    return _tokenizers[model]


def preview_rows(examples: list[Example], tokenizer, config: Config | None = None, n: int = 3) -> list[dict]:
    """The first `n` examples as the model sees them: chat-rendered student and teacher prompts, token counts."""
    config = config or Config()
    selector = DemoSelector(examples, config.teacher.demo_selection, config.teacher.num_demos, config.train.seed)
    rows = []
    for index, ex in enumerate(examples[:n]):
        student = student_prompt(tokenizer, ex)
        teacher = teacher_prompt(tokenizer, ex, selector.demos_for(index), config.teacher.template)
        rows.append({
            "source": ex.source, "student_prompt": student, "teacher_prompt": teacher,
            "demonstration": ex.demonstration,
            "student_tokens": len(tokenizer(student, add_special_tokens=False).input_ids),
            "teacher_tokens": len(tokenizer(teacher, add_special_tokens=False).input_ids),
            "demonstration_tokens": len(tokenizer(ex.demonstration, add_special_tokens=False).input_ids),
        })
    return rows


# -- config and the equivalent command -------------------------------------------------------
def make_config(*, model: str = "embedded", load_in_4bit: bool | None = None, method: str = "sdft", steps: int = 12,
                learning_rate: float = 5e-4, lora_r: int = 16, max_new_tokens: int = 48, batch_size: int = 2,
                teacher: str = "ema", divergence: str = "forward KL (paper)", topk: int = 0,
                threads: int = 1) -> Config:
    """The Config for the Train tab's settings, by name; raises ValueError saying what to change.

    Every name but two is the config field's: divergence is a name from DIVERGENCES (the loss's
    alpha), and topk 0 compares the full vocabularies, k > 0 the teacher's top-k plus a tail bucket."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}; got {divergence!r}")
    vocab = {"vocab": "topk", "topk": int(topk)} if topk and int(topk) > 0 else {}
    return Config().replace(model=(model or "embedded").strip(), load_in_4bit=load_in_4bit, method=method,
                            steps=int(steps), learning_rate=float(learning_rate), lora_r=int(lora_r),
                            max_new_tokens=int(max_new_tokens), batch_size=int(batch_size), teacher=teacher,
                            alpha=DIVERGENCES[divergence], threads=int(threads), **vocab)


def cli_command(config: Config, data: str = "demos.jsonl", out: str = "runs/my-run") -> str:
    """`sdft-kit train` with a flag for every field that differs from the defaults."""
    defaults = Config().to_dict()
    values = config.to_dict()
    parts = ["sdft-kit", "train", "--data", data, "--out", out]
    for section, f in fields_by_section():
        value = values[section][f.name]
        if value == defaults[section][f.name]:
            continue
        if isinstance(value, bool):
            parts.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        else:
            parts += [flag(f.name), str(value)]
    return " ".join(shlex.quote(part) for part in parts)


# -- training in the background --------------------------------------------------------------
def format_seconds(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:{'02' if hours else ''}d}:{rest % 60:02d}"


@dataclass
class Status:
    state: str  # idle, loading, training, stopping, stopped, done, failed
    step: int
    steps: int
    text: str  # "step 3/5, elapsed 0:42 < remaining 1:10 · loss ..." or what happened
    run_dir: Path | None
    teacher_check: str = ""  # the quick teacher check's verdict, before SDFT training

    @property
    def markdown(self) -> str:
        """What the page shows: the status line, then the teacher check under it."""
        return self.text + (f"\n\n{self.teacher_check}" if self.teacher_check else "")


class TrainingWorker:
    """Runs one training in a thread that writes the run directory; the app polls `status()` and `records()`.

    Stop sets a flag checked between steps; the worker then writes the checkpoint and the
    adapter, so `resume()` continues the run with `Trainer(..., resume=True)`.
    """

    def __init__(self, runs_dir: str | Path):
        self.runs_dir = Path(runs_dir)
        self.run_dir: Path | None = None
        self.state, self.error = "idle", ""
        self._records: list[dict] = []
        self._steps = 0
        self._started = self._last_step_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.teacher_check = ""  # the quick teacher check's verdict, before SDFT training

    # -- controls --
    def start(self, config: Config, examples: list[Example]) -> Path:
        """A new run in a fresh folder of runs_dir (named by the time and method)."""
        if not examples:
            raise DataError("no data yet: upload a file or pick a sample on the Data tab first.")
        self._take_lock()
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = self.runs_dir / f"{stamp}-{config.train.method}"
            suffix = 1
            while run_dir.exists():
                suffix += 1
                run_dir = self.runs_dir / f"{stamp}-{config.train.method}-{suffix}"
            mark_run(run_dir)  # a run folder with no step yet, which the Trainer may start in
            config.save(run_dir / "config.yaml")  # listed as a run at once (the trainer rewrites it)
            save_examples(examples, run_dir / "data.jsonl")
        except BaseException:
            _ONE_TRAINING.release()
            raise
        self._launch(run_dir, config, examples, resume=False)
        return run_dir

    def resume(self, run_dir: str | Path, steps: int | None = None) -> Path:
        """Continue a stopped run from its checkpoint (optionally to a new total of `steps`)."""
        run_dir = Path(run_dir)
        if not (run_dir / "checkpoint" / "trainer_state.json").is_file() or not (run_dir / "data.jsonl").is_file():
            raise FileNotFoundError(f"{run_dir.name}: no checkpoint to resume from")
        config = Config.load(run_dir / "config.yaml")
        if steps:
            config = config.replace(steps=steps)
        examples = load_examples(run_dir / "data.jsonl")
        self._take_lock()
        self._launch(run_dir, config, examples, resume=True)
        return run_dir

    def stop(self) -> None:
        if self.is_running():
            self.state = "stopping"
            self._stop.set()

    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- what the page shows --
    def records(self) -> list[StepRecord]:
        return list(self._records)

    def status(self) -> Status:
        records = self._records
        step = records[-1]["step"] if records else 0
        head = f"step {step}/{self._steps}"
        if self.state == "idle":
            return Status("idle", 0, 0, "no training yet", None)
        if self.state == "failed":
            return Status("failed", step, self._steps, f"{head} · failed: {self.error}", self.run_dir)
        if self.state == "loading":
            text = f"{head} · loading the model, checking the teacher… ({format_seconds(time.time() - self._started)})"
            return Status("loading", step, self._steps, text, self.run_dir, self.teacher_check)
        elapsed = records[-1]["elapsed_s"] if records else 0.0
        if self.state in ("training", "stopping"):
            elapsed += time.time() - self._last_step_at  # the step under way
        session = [r for r in records if r["step"] > self._first_step]
        per_step = sum(r["seconds"]["total"] for r in session) / len(session) if session else None
        remaining = "?" if per_step is None else format_seconds(
            per_step * (self._steps - step) - (time.time() - self._last_step_at if self.state == "training" else 0))
        text = f"{head}, elapsed {format_seconds(elapsed)} < remaining {remaining}"
        if records:
            last = records[-1]
            text += f" · loss {last['loss']:.4f}" + ("" if last["mean_kl"] is None else f" · mean KL {last['mean_kl']:.4f}")
        text += {"training": "", "stopping": " · stopping after this step…", "done": " · done",
                 "stopped": " · stopped (Resume continues from the checkpoint)"}[self.state]
        return Status(self.state, step, self._steps, text, self.run_dir, self.teacher_check)

    # -- the thread --
    def _take_lock(self) -> None:
        if not _ONE_TRAINING.acquire(blocking=False):
            raise BusyError("A training run is already in progress (one at a time). Stop it or wait for it to finish.")

    def _launch(self, run_dir: Path, config: Config, examples: list[Example], resume: bool) -> None:
        self.run_dir, self.state, self.error, self.teacher_check = run_dir, "loading", "", ""
        self._records = load_records(run_dir) if resume else []
        self._first_step = self._records[-1]["step"] if self._records else 0
        self._steps = config.train.steps
        self._started = self._last_step_at = time.time()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(run_dir, config, examples, resume),
                                        name="sdft-kit-training", daemon=True)
        self._thread.start()

    def _run(self, run_dir: Path, config: Config, examples: list[Example], resume: bool) -> None:
        from .trainer import Trainer

        try:
            trainer = Trainer(config, examples, run_dir, resume=resume)
            if config.train.method == "sdft" and not resume:
                from .check import quick_check

                self.teacher_check = quick_check(trainer).summary()  # shown under the status line
            self._records = load_records(run_dir)  # resume trims steps logged after the checkpoint
            self.state, self._last_step_at = "training", time.time()
            stopped = self._stop.is_set()
            steps = trainer.steps()
            while not stopped:
                record = next(steps, None)
                if record is None:
                    break
                self._records = self._records + [record]
                self._last_step_at = time.time()
                stopped = self._stop.is_set()
            if stopped:
                steps.close()
                trainer.save_checkpoint()
                trainer.save_adapter(run_dir / "adapter")
            self.state = "stopped" if stopped else "done"
        except Exception as err:  # shown on the page; the app stays usable
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
        finally:
            _ONE_TRAINING.release()


def list_runs(runs_dir: str | Path) -> list[Path]:
    """Run folders of runs_dir (those with a config.yaml), newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def run_config(run_dir: Path) -> Config:
    return Config.load(Path(run_dir) / "config.yaml")


def adapter_dir(run_dir: Path) -> Path:
    """The run's final adapter, else the checkpoint's."""
    for path in (run_dir / "adapter", run_dir / "checkpoint" / "adapter"):
        if (path / "adapter_config.json").is_file():
            return path
    raise FileNotFoundError(f"{run_dir.name}: no adapter yet (train at least one step)")


# -- export and compare ----------------------------------------------------------------------
def export_adapter_zip(run_dir: Path, dest_dir: Path) -> Path:
    """The adapter (PEFT format, with the tokenizer and the run's config.yaml) as <run>-adapter.zip."""
    run_dir = Path(run_dir)
    target = Path(dest_dir) / f"{run_dir.name}-adapter.zip"
    _zip(adapter_dir(run_dir), target, "adapter", zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(target, "a") as archive:
        archive.write(run_dir / "config.yaml", "adapter/sdft_kit_config.yaml")
    return target


def _zip(folder: Path, target: Path, root: str, compression: int) -> None:
    with zipfile.ZipFile(target, "w", compression) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{root}/{path.relative_to(folder)}")


def export_merged_zip(run_dir: Path, dest_dir: Path) -> Path:
    """Base weights with the adapter merged in (safetensors + tokenizer) as <run>-merged.zip."""
    from .models import load_adapter, uses_4bit

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    config = run_config(run_dir)
    if uses_4bit(config.model):
        raise ValueError("this run's base model is 4-bit: merging into 4-bit weights loses precision. "
                         "Download the adapter and merge it into a 16-bit copy of the base.")
    model, tokenizer = load_adapter(adapter_dir(run_dir), config.model)
    merged = model.merge_and_unload()
    target = dest_dir / f"{run_dir.name}-merged.zip"
    with tempfile.TemporaryDirectory() as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _zip(Path(staging), target, "merged", zipfile.ZIP_STORED)  # weights barely compress: store them
    return target


def compare_answers(prompt: str, demonstration: str, model: str = "embedded", run_dir: Path | None = None,
                    max_new_tokens: int = 64) -> dict:
    """Greedy answers to one prompt: the base model, base + the run's trained adapter, and the teacher (the
    base shown the demonstration, with the run's template). No run or no demonstration gives None there."""
    from .chat import generate_text
    from .models import load_model

    if not prompt.strip():
        raise ValueError("type a prompt to compare the answers")
    config = run_config(run_dir) if run_dir is not None else Config().replace(model=model)
    base, tokenizer = load_model(config.model.model, config.model)
    example = Example(({"role": "user", "content": prompt},), demonstration)
    student = student_prompt(tokenizer, example)
    answers = {"base": generate_text(base, tokenizer, [student], max_new_tokens)[0], "trained": None, "teacher": None}
    if demonstration.strip():
        shown = teacher_prompt(tokenizer, example, [demonstration], config.teacher.template)
        answers["teacher"] = generate_text(base, tokenizer, [shown], max_new_tokens)[0]
    if run_dir is not None:
        from peft import PeftModel

        trained = PeftModel.from_pretrained(base, adapter_dir(Path(run_dir)))
        answers["trained"] = generate_text(trained, tokenizer, [student], max_new_tokens)[0]
    return answers
