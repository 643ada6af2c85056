"""The forgetting monitor: what a run gains on the new task against what it loses of the model's prior skills,
step by step (the paper picked checkpoints on the new task alone).

    load_probes(config, examples)    before the model loads: the prior-skills probe, and the new task's eval
                                     items or records held out of the training data; None when it is off
    Monitor(trainer)                 run by driver.steps when monitor_every > 0: scores the weights before step 1,
                                     every monitor_every steps and at the last step, into the step records; with
                                     keep_checkpoints 'tradeoff', keeps the adapters on the Pareto front
    front(evaluations)               the evaluations no other one matches on both scores and beats on one
    chosen(evaluations, tolerance)   the step the model card names (the rule is in its docstring)
    card_lines(records, config)      the model card's section

An evaluation (a record's `monitor`, and `monitor_start` for the weights before step 1 in the first record):
    {"step", "prior_skills": accuracy on the probe (0-1), "new_task": ROUGE-L F1 of greedy answers to the held-out
     demonstrations, or accuracy on the new task's eval items (0-1), "new_task_measure", "n_prior", "n_new",
     "seconds"}

Scoring leaves training as it was: eval mode, no gradients, the adapter never merged into the base weights
(rollouts merge and unmerge it, a round trip that moves the base weights by float rounding), and torch's and
Python's random states restored afterwards: a seeded run's losses are the same with the monitor on or off
(tests/test_monitor.py). With several processes (accelerate), process 0 alone scores; the others wait for it
at the next step's all-reduce.

Kept adapters and crashes: only the evaluations up to the newest training checkpoint are durable (a resumed run
redoes the steps after it), so a kept adapter is deleted only once a durable evaluation beats it, and a resumed
run deletes the adapters of the steps it will redo. A kill at any moment leaves every adapter of the front a
resumed run sees.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import Config
from .data import DataError, Example
from .evaluate import EvalItem, evaluate

if TYPE_CHECKING:
    from .records import StepRecord
    from .trainer import Trainer

KEPT = "checkpoints"  # run_dir/checkpoints/step-N/adapter: the adapters keep_checkpoints 'tradeoff' keeps


@dataclass
class Probes:
    """What the monitor scores: the prior-skills items, and the new task's eval items or held-out records."""

    prior: list[EvalItem]
    new_task: list[EvalItem]  # scored by accuracy (empty when records are held out)
    holdout: list[Example]  # scored by ROUGE-L F1 of greedy answers to their demonstrations

    @property
    def measure(self) -> str:
        return "ROUGE-L F1" if self.holdout else "accuracy"


def eval_items(source: str, limit: int, field: str) -> list[EvalItem]:
    """The first `limit` (0: all) eval items of a bundled task or of an eval-items JSONL file."""
    from .tasks import TASKS, load_eval_items, load_task

    if source in TASKS:
        items = load_task(source).eval
    elif Path(source).expanduser().is_file():
        items = load_eval_items(source)
    else:
        raise DataError(f"{field} {source!r} is neither a bundled task ({', '.join(TASKS)}) nor a file; give one "
                        f"(--{field.replace('_', '-')})")
    if not items:
        raise DataError(f"{source}: holds no eval items for the forgetting monitor ({field})")
    return items[:limit or None]


def load_probes(config: Config, examples: list[Example]) -> tuple[list[Example], Probes | None]:
    """The examples to train on, and what the monitor scores (None when monitor_every is 0: nothing is held out).

    With monitor_new_task 'holdout', monitor_holdout records drawn at random (seeded by train.seed: the same in
    every process and on resume) leave the training data; the rest keep their order."""
    monitor = config.monitor
    if not monitor.monitor_every:
        return examples, None
    prior = eval_items(monitor.monitor_probe, monitor.monitor_limit, "monitor_probe")
    if monitor.monitor_new_task != "holdout":
        return examples, Probes(prior, eval_items(monitor.monitor_new_task, monitor.monitor_limit, "monitor_new_task"),
                                [])
    if len(examples) <= monitor.monitor_holdout:
        raise DataError(f"the forgetting monitor holds out {monitor.monitor_holdout} records (monitor_holdout) and "
                        f"the data has {len(examples)}: lower --monitor-holdout, or score the new task on an eval "
                        "file (--monitor-new-task FILE)")
    held = set(random.Random(config.train.seed).sample(range(len(examples)), monitor.monitor_holdout))
    return ([ex for i, ex in enumerate(examples) if i not in held],
            Probes(prior, [], [examples[i] for i in sorted(held)]))


# -- scoring without disturbing training -------------------------------------------------------
@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers to chat-rendered prompts, decoded with the adapter as it is: never merged into the base
    weights as rollouts do (rollout.merged_lora), since the merge-and-unmerge round trip moves them by rounding."""
    from .batch import eos_ids, mask_after_eos, tokenize_prompts
    from .models import eval_mode

    device = next(model.parameters()).device
    eos = eos_ids(model, tokenizer)
    answers = []
    with eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            ids, mask = tokenize_prompts(tokenizer, prompts[start:start + batch_size], device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
            completions = out[:, ids.shape[1]:]
            answers += [tokenizer.decode(row[keep.bool()], skip_special_tokens=True)
                        for row, keep in zip(completions, mask_after_eos(completions, eos))]
    return answers


@contextlib.contextmanager
def same_random_state(device: torch.device) -> Iterator[None]:
    """Torch's (CPU and this CUDA device's) and Python's random states as they were before the block."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        yield
    random.setstate(state)


def score(model, tokenizer, probes: Probes, max_new_tokens: int) -> dict:
    """The model's prior-skills and new-task scores (an evaluation without its step), and the seconds taken."""
    from .models import eval_mode

    start = time.perf_counter()
    with torch.no_grad(), eval_mode(model):
        prior = evaluate(model, tokenizer, probes.prior, max_new_tokens=max_new_tokens, progress=False,
                         generate=greedy_answers).accuracy
        if probes.holdout:
            from .check import similarity
            from .demos import student_prompt

            answers = greedy_answers(model, tokenizer, [student_prompt(tokenizer, ex) for ex in probes.holdout],
                                     max_new_tokens)
            new = sum(similarity(a, ex.demonstration) for a, ex in zip(answers, probes.holdout)) / len(answers)
        else:
            new = evaluate(model, tokenizer, probes.new_task, max_new_tokens=max_new_tokens, progress=False,
                           generate=greedy_answers).accuracy
    return {"prior_skills": prior, "new_task": new, "new_task_measure": probes.measure, "n_prior": len(probes.prior),
            "n_new": len(probes.holdout or probes.new_task), "seconds": round(time.perf_counter() - start, 3)}


# -- the Pareto front and the choice -----------------------------------------------------------
def beats(a: dict, b: dict) -> bool:
    """Evaluation a is as good as b on both scores and better on one, or equal on both and later (so of equal
    scores one step is kept: the one trained longest)."""
    return (a["new_task"] >= b["new_task"] and a["prior_skills"] >= b["prior_skills"]
            and (a["new_task"] > b["new_task"] or a["prior_skills"] > b["prior_skills"] or a["step"] > b["step"]))


def front(evaluations: list[dict]) -> list[dict]:
    """The evaluations no other one beats (the Pareto front of (new task, prior skills)), in step order."""
    return [e for e in evaluations if not any(beats(other, e) for other in evaluations)]


def chosen(evaluations: list[dict], tolerance: float) -> dict | None:
    """The step to use: of the front, the best new-task score among the steps whose prior-skills score is at most
    `tolerance` below the first evaluation's (the weights before training). Never empty when the first
    evaluation is there: it, or a step that beats it, qualifies (the base itself when training only hurt)."""
    if not evaluations:
        return None
    floor = evaluations[0]["prior_skills"] - tolerance - 1e-9  # 1e-9: a score exactly at the floor qualifies
    eligible = [e for e in front(evaluations) if e["prior_skills"] >= floor]
    return max(eligible, key=lambda e: (e["new_task"], e["prior_skills"]), default=None)


def evaluations_of(records: list[StepRecord]) -> list[dict]:
    """Every evaluation in a run's records, in step order (the start's first)."""
    found = []
    for record in records:
        found += [record[key] for key in ("monitor_start", "monitor") if record.get(key)]
    return found


def kept_folder(step: int) -> str:
    return f"{KEPT}/step-{step}"


# -- the instrument ----------------------------------------------------------------------------
class Monitor:
    """The instrument driver.steps runs when monitor_every > 0: `start()` before the first step, the call after
    each step (before its record is written), `after_checkpoint()` after each training checkpoint."""

    def __init__(self, trainer: Trainer):
        from .records import load_records

        self.trainer, self.config = trainer, trainer.config.monitor
        self.active = trainer.processes.main  # process 0 alone scores (and writes)
        self.run = trainer.run if self.active else None
        self.keep = self.run is not None and self.config.keep_checkpoints == "tradeoff"
        # A resumed run's evaluations so far (its records were trimmed to its checkpoint).
        self.evaluations = evaluations_of(load_records(self.run.path)) if self.run is not None else []
        self.pending: dict | None = None  # the start's scores, for the first record
        if self.keep:
            (self.run.path / KEPT).mkdir(exist_ok=True)
            self._forget_after(trainer.step)
            self.after_checkpoint()

    def start(self) -> None:
        """Score the weights before step 1 (when the run starts from its beginning)."""
        if self.active and self.trainer.step == 0:
            self.pending = self._evaluate(0)

    def __call__(self, trainer: Trainer, record: StepRecord) -> dict | None:
        if not self.active:
            return None
        added = {"monitor_start": self.pending} if self.pending is not None else {}
        self.pending = None
        step = record["step"]
        if step % self.config.monitor_every == 0 or step == record["steps"]:
            added["monitor"] = self._evaluate(step)
        return added or None

    def after_checkpoint(self) -> None:
        """Delete the kept adapters that a durable evaluation (at or before the newest checkpoint) beats."""
        if not self.keep:
            return
        durable = [e for e in self.evaluations if e["step"] <= self.trainer.saved_step]
        for evaluation in self.evaluations:
            if any(beats(other, evaluation) for other in durable):
                shutil.rmtree(self.run.path / kept_folder(evaluation["step"]), ignore_errors=True)

    def _evaluate(self, step: int) -> dict:
        trainer = self.trainer
        with same_random_state(trainer.device):
            evaluation = {"step": step, **score(trainer.model, trainer.tokenizer, trainer.probes,
                                                trainer.config.rollout.max_new_tokens)}
        self.evaluations.append(evaluation)
        if self.keep and not any(beats(other, evaluation) for other in self.evaluations):
            from .export import save_adapter

            self.run.save(kept_folder(step), lambda folder: save_adapter(trainer.model, trainer.tokenizer,
                                                                         folder / "adapter"), step)
        return evaluation

    def _forget_after(self, step: int) -> None:
        """Delete the kept adapters of steps after `step` (a resumed run redoes them) and half-written ones."""
        for folder in (self.run.path / KEPT).iterdir():
            number = folder.name.removeprefix("step-")
            if not number.isdigit() or int(number) > step:
                shutil.rmtree(folder, ignore_errors=True)


# -- the model card ----------------------------------------------------------------------------
def card_lines(records: list[StepRecord], config: Config, run_dir: Path) -> list[str]:
    """The model card's "Forgetting monitor" section (no lines when the run was not monitored)."""
    evaluations = evaluations_of(records)
    if not evaluations:
        return []
    monitor, latest = config.monitor, evaluations[-1]
    on_front = {e["step"] for e in front(evaluations)}
    pick = chosen(evaluations, monitor.monitor_tolerance)
    last_step = records[-1]["step"]

    def where(step: int) -> str:
        if (run_dir / kept_folder(step) / "adapter").is_dir():
            return f"`{kept_folder(step)}/adapter`"
        return "`adapter/` (the final adapter)" if step == last_step else "not kept"

    seconds = sorted(e["seconds"] for e in evaluations)
    new_task = (f"ROUGE-L F1 of greedy answers to the demonstrations of {latest['n_new']} training records held out "
                "(never trained on)" if latest["new_task_measure"] == "ROUGE-L F1"
                else f"accuracy on {latest['n_new']} items of {monitor.monitor_new_task}")
    lines = ["## Forgetting monitor", "",
             f"Scored before training, every {monitor.monitor_every} steps and at the last step (median "
             f"{seconds[len(seconds) // 2]:.1f} s each): **prior skills** = accuracy on {latest['n_prior']} items of "
             f"{monitor.monitor_probe}; **new task** = {new_task}.", "",
             f"| step | new task ({latest['new_task_measure']}) | prior skills (accuracy) | Pareto front "
             "| adapter (in the run directory) |",
             "|---|---|---|---|---|"]
    lines += [f"| {e['step']} | {e['new_task']:.3f} | {e['prior_skills'] * 100:.1f}% | "
              f"{'yes' if e['step'] in on_front else ''} | {where(e['step']) if e['step'] in on_front else ''} |"
              for e in evaluations]
    base = evaluations[0]
    lines += ["", f"**Chosen: step {pick['step']}** ({where(pick['step'])}): the best new-task score "
                  f"({pick['new_task']:.3f}) on the front among the steps whose prior-skills score is at most "
                  f"{monitor.monitor_tolerance * 100:g} points below the start's ({base['prior_skills'] * 100:.1f}%, "
                  f"step {base['step']}; --monitor-tolerance)."]
    if pick["step"] == 0:
        lines.append("No trained step gained on the new task within that loss of prior skills: the base model is the "
                     "choice; try a lower learning rate or fewer steps.")
    if not (run_dir / KEPT).is_dir():
        lines.append("This run kept the final adapter only; `--keep-checkpoints tradeoff` keeps every step of the "
                     "front.")
    return lines + [""]
