"""The web app's Evaluate tab, as plain functions (no gradio here).

    evaluate_run(run_dir)     the run beside the base model: its new-task score and the prior-skills probe
    score_table(result)       those scores as a Markdown table
    runs_curves(run_dirs)     several runs' loss and KL curves on one plot
    tracker_note(run_dir)     where the run's steps were logged, and the command that opens that view

The new-task score: for a run trained on a bundled task, accuracy on the task's eval split; for a run
trained on uploaded records, the ROUGE-L F1 (check.similarity, the teacher check's measure) of greedy
answers to the records held out of training (app_runs.HELD_OUT). The prior-skills probe: the bundled
`skills_probe` task (easy multiple choice the base model gets right; a drop measures forgetting).
A run's scores are saved in its folder (evaluation.json); the base model's are kept per model.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .app_runs import APP_RUN, HELD_OUT
from .config import Config
from .data import load_examples
from .demos import student_prompt
from .export import adapter_dir

EVALUATION = "evaluation.json"
TASK_EVAL_LIMIT = 24  # items of a bundled task's eval split scored (greedy answers take the time)
MAX_ANSWER_TOKENS = 64
PROBE = "skills_probe"
PROBE_LIMIT: int | None = None  # questions of the probe scored (None: all 31)
_base_scores: dict[str, dict] = {}  # (model config, what was scored) -> the base model's scores
_one_at_a_time = threading.Lock()  # an evaluation holds a model; two at once would double the memory

Progress = Callable[[float, str], None]


def _note(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / APP_RUN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _new_task(run_dir: Path, note: dict) -> tuple[str, list, str]:
    """(kind, items, what is measured) of the run's new-task score: 'task' eval items, 'held_out' examples,
    or 'none'."""
    if note.get("task"):
        from .tasks import load_task

        items = load_task(note["task"]).eval[:TASK_EVAL_LIMIT]
        return "task", items, f"accuracy on {len(items)} questions of the {note['task']} task's eval split"
    path = Path(run_dir) / HELD_OUT
    if path.is_file():
        examples = load_examples(path)
        return "held_out", examples, (f"ROUGE-L F1 of greedy answers to the {len(examples)} held-out "
                                      "demonstrations")
    return "none", [], "no held-out records (the data had fewer than 10, or none were held out)"


def _scores(model, tokenizer, kind: str, items: list, probe: list, max_new_tokens: int) -> dict:
    """The new-task score (None without items) and the probe's accuracy of one model."""
    from .check import similarity
    from .evaluate import evaluate
    from .generation import generate_text

    new_task = None
    if kind == "task":
        new_task = evaluate(model, tokenizer, items, max_new_tokens=max_new_tokens, progress=False).accuracy
    elif kind == "held_out":
        answers = generate_text(model, tokenizer, [student_prompt(tokenizer, ex) for ex in items], max_new_tokens)
        new_task = sum(similarity(a, ex.demonstration) for a, ex in zip(answers, items)) / len(items)
    return {"new_task": new_task, "prior_skills": evaluate(model, tokenizer, probe, progress=False).accuracy}


def evaluate_run(run_dir: str | Path, progress: Progress | None = None) -> dict:
    """The run's adapter and its base model scored on the new task and the prior-skills probe (see the
    module); saved as the run's evaluation.json and returned: {"base": {...}, "trained": {...}, ...}."""
    from peft import PeftModel

    from .models import load_model
    from .tasks import load_task

    report = progress or (lambda fraction, phase: None)
    run_dir = Path(run_dir)
    config = Config.load(run_dir / "config.yaml")
    adapter = adapter_dir(run_dir)  # a run with no step yet says so before any model loads
    kind, items, measure = _new_task(run_dir, _note(run_dir))
    probe = load_task(PROBE).eval[:PROBE_LIMIT]
    max_new_tokens = min(config.rollout.max_new_tokens, MAX_ANSWER_TOKENS)
    start = time.perf_counter()
    with _one_at_a_time:
        report(0.0, "loading the model")
        base, tokenizer = load_model(config.model.model, config.model)
        key = hashlib.sha256(json.dumps([config.to_dict()["model"], kind, measure, max_new_tokens,
                                         [str(getattr(x, "source", "")) + x.prompt for x in items]],
                                        sort_keys=True).encode()).hexdigest()
        if key not in _base_scores:
            report(0.2, "scoring the base model")
            _base_scores[key] = _scores(base, tokenizer, kind, items, probe, max_new_tokens)
        report(0.6, "scoring the trained adapter")
        trained = PeftModel.from_pretrained(base, adapter)
        trained.eval()
        scores = _scores(trained, tokenizer, kind, items, probe, max_new_tokens)
    result = {"run": run_dir.name, "base": _base_scores[key], "trained": scores, "new_task_measure": measure,
              "prior_skills_measure": f"accuracy on the {len(probe)} questions of the skills probe",
              "seconds": round(time.perf_counter() - start, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    (run_dir / EVALUATION).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def saved_evaluation(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / EVALUATION).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def score_table(result: dict) -> str:
    """A Markdown table: each measure, the base model's score and the run's, and the change."""
    def cell(value, percent: bool) -> str:
        return "–" if value is None else f"{value:.0%}" if percent else f"{value:.2f}"

    rows = ["| measure | base model | " + result["run"] + " | change |", "|---|---|---|---|"]
    for key, what in (("new_task", result["new_task_measure"]), ("prior_skills", result["prior_skills_measure"])):
        base, trained = result["base"][key], result["trained"][key]
        percent = key == "prior_skills" or what.startswith("accuracy")
        change = "–" if base is None or trained is None else (
            f"{(trained - base) * 100:+.0f} points" if percent else f"{trained - base:+.2f}")
        rows.append(f"| **{key.replace('_', ' ')}**: {what} | {cell(base, percent)} | {cell(trained, percent)} "
                    f"| {change} |")
    return "\n".join(rows) + f"\n\nScored in {result['seconds']:.0f} s ({result['date']})."


def runs_curves(run_dirs: list[Path]):
    """Loss and mean KL of several runs on one plot (views.curves), each named by its folder."""
    from .records import load_records
    from .views import curves

    runs = [(Path(d).name, load_records(d)) for d in run_dirs]
    runs = [(name, records) for name, records in runs if records]
    return curves(*[records for _, records in runs], names=[name for name, _ in runs]) if runs else None


def tracker_note(run_dir: str | Path) -> str:
    """Where the run's steps were logged (its tracker and project), and the command that opens that view."""
    run_dir = Path(run_dir)
    note = _note(run_dir)
    tracker, project = note.get("tracker", "none"), note.get("tracker_project", "sdft-kit")
    if tracker == "trackio":
        return (f"Logged to trackio (local), project `{project}`, run `{run_dir.name}`. On the server's machine, "
                f"`trackio show --project {project}` opens its dashboard (one project per login).")
    if tracker == "tensorboard":
        return f"Logged to TensorBoard: `tensorboard --logdir {run_dir / 'tensorboard'}` on the server's machine."
    if tracker == "wandb":
        return f"Logged to Weights & Biases, project `{project}`, run `{run_dir.name}`."
    return "Not logged to a tracker (Experiment tracking was 'none', or 'auto' without trackio installed)."
