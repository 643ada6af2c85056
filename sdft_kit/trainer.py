"""The training loop: the four steps composed, one record per optimizer step.

    for each micro-batch:
        prompts   = student_prompt(ex), teacher_prompt(ex, demos)      # 1 demo selection
        batch     = engine.sample(prompts)                             # 2 rollout
        objective = sdft_objective(model, teacher, batch)              # 3 teacher scoring, 4 update
        objective.student.loss.backward()
    optimizer_step(); teacher.after_step(); engine.after_step()

What differs between methods (SDFT's rollouts and teacher, SFT's demonstrations) comes from the
method's entry in methods.py; driver.py takes the steps to the end of a run (records, checkpoints,
progress, stop); checkpoint.py keeps the run directory whole.

A run directory holds config.yaml, metrics.jsonl (one JSON record per step, see
records.py), adapter/ (PEFT format) and checkpoint/ (adapter + optimizer + scheduler +
teacher state + data position) to resume from; checkpoint.py keeps it whole through
crashes, Ctrl-C and full disks, and locks it while a Trainer trains in it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import driver
from .batch import Completions
from .checkpoint import CHECKPOINT, RunDir, holds_lora_factors, newest_checkpoint, read_state, write_state
from .config import Config
from .data import DataError, DataOrder, Example, fingerprint
from .demos import DemoSelector, teacher_chat_template
from .distributed import launched_processes, process_device
from .driver import NonFiniteSteps
from .inspector import inspect_prompts
from .losses import chunk_shares
from .methods import batches_per_call, make_batch, method_of, next_batches
from .monitor import load_probes
from .models import (add_lora, context_length, load_model, lora_parameters, peak_rss_mb, release_freed_memory,
                     set_threads)
from .records import SampleRecord, StepRecord, append_record, load_records, sample_record  # noqa: F401 (re-exported)
from .rollout import make_engine
from .teachers import make_teacher
from .update import make_optimizer, optimizer_step


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: max allocated on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


@dataclass
class MicroBatch:
    """What one micro-batch adds to its step's record (sums, so micro-batches add up)."""

    loss: float
    divergence_sum: float  # per-token divergence (or NLL) over every completion token
    tokens: int
    is_weight_sum: float  # importance weights over the loss tokens, for engines sampling from other weights
    is_weight_count: int
    sample: SampleRecord
    sequences: int  # sequences with a token in the loss: the micro-batch's weight among processes


class Trainer:
    """Holds the state of a run (model, optimizer, teacher, rollout engine, data position).

    With `out_dir`, the run directory is checked and locked before the model loads (see
    checkpoint.RunDir.open); `resume=True` continues the run there from its newest checkpoint.
    """

    def __init__(self, config: Config, examples: list[Example], out_dir: str | Path | None = None, *,
                 model=None, tokenizer=None, resume: bool = False):
        if not examples:
            raise ValueError("no training examples")
        examples, self.probes = load_probes(config, examples)  # the forgetting monitor's (None when it is off)
        self.config, self.examples, self.method = config, examples, method_of(config)
        # Several processes (accelerate launch): each trains on its shard; process 0 alone writes the run.
        self.processes = launched_processes()
        writes = out_dir is not None and self.processes.main
        self.run = RunDir.open(out_dir, config, fingerprint(examples), resume=resume) if writes else None
        self.processes.wait()  # process 0 has checked, locked and (on resume) recovered the run directory
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.stop_requested = False
        try:
            self._build(model, tokenizer, resume)
        except BaseException:
            self.close()
            raise

    def _build(self, model, tokenizer, resume: bool) -> None:
        config, train = self.config, self.config.train
        set_threads(train.threads)
        torch.manual_seed(train.seed)
        if model is None:
            model_config = replace(config.model, device=process_device(config.model.device, self.processes))
            base, tokenizer = load_model(config.model.model, model_config)
            model = add_lora(base, config.model, seed=train.seed)  # the same seed: the same LoRA in every process
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        if train.release_memory and self.device.type == "cpu":
            release_freed_memory()
        self.optimizer, self.scheduler = make_optimizer(model, train)
        self.teacher = make_teacher(model, config.teacher)
        self.teacher_chat_template = teacher_chat_template(tokenizer, config.teacher)
        self.selector = DemoSelector(self.examples, config.teacher.demo_selection, config.teacher.num_demos,
                                     train.seed)
        # Every record's prompts, before any step: a record over the model's context (a clear error now, not a
        # huge allocation at step 1) or a missing template stops here; warnings stay in `inspection`.
        self.inspection = inspect_prompts(tokenizer, self.examples, config, context=context_length(model.config))
        if self.inspection.errors:
            raise DataError(self.inspection.summary().removeprefix("error: "))
        longest_prompt = max(len(record.student_ids) for record in self.inspection.records)  # sizes vLLM's KV cache
        self.engine = (make_engine(model, tokenizer, config.rollout, longest_prompt=longest_prompt,
                                   sequences=train.batch_size * batches_per_call(config, self.method))
                       if self.method.batch == "rollout" else None)
        self.order = DataOrder(len(self.examples), train.seed)  # the data position: order.seen
        self.pending: list[tuple[list[int], Completions]] = []  # rollouts sampled for the next micro-batches
        self.step, self.elapsed, self.saved_step = 0, 0.0, 0
        if self.run is not None and resume:
            if self.run.checkpoint is not None:
                self.load_checkpoint(self.run.checkpoint)
            self.run.trim_metrics(self.step)  # steps logged after the checkpoint are redone
        elif resume and self.out_dir is not None and (newest := newest_checkpoint(self.out_dir)) is not None:
            self.load_checkpoint(newest[1])  # another process than 0: the checkpoint process 0 found

    def make_batch(self, indices: list[int]) -> Completions:
        """The batch of these examples, as the method makes it (SFT's demonstrations, SDFT's rollouts)."""
        return make_batch(self, indices)

    def _next_batch(self, seconds: dict[str, float]) -> tuple[list[int], Completions]:
        """The next micro-batch's example indices and batch, from the batches `next_batches` sampled together."""
        if not self.pending:
            start = time.perf_counter()
            self.pending = next_batches(self)
            if self.engine is not None:
                seconds["rollout"] += time.perf_counter() - start
        return self.pending.pop(0)

    def _micro_batch(self, seconds: dict[str, float]) -> MicroBatch:
        """Forward and backward one micro-batch; adds each phase's time to `seconds`.

        Teacher and student run on chunks of rows, so only one chunk's activations and
        full-vocabulary tensors are alive at once; each chunk's loss is weighted by its
        share of the batch (`chunk_shares`), which gives the whole batch's loss and gradients.
        """
        cfg = self.config
        indices, batch = self._next_batch(seconds)
        loss = divergence_sum = is_weight_sum = 0.0
        is_weight_count, sample = 0, None
        mask = self.method.loss_mask(batch, cfg.loss)
        for rows, share in chunk_shares(mask, cfg.train.chunk_size):
            part = batch.select(rows)
            out = self.method.objective(self.model, self.teacher, part, cfg)
            start = time.perf_counter()
            (out.student.loss * share / cfg.train.grad_accum).backward()
            seconds["teacher"] += out.seconds["teacher"]
            seconds["student"] += out.seconds["student"] + time.perf_counter() - start
            loss += out.student.loss.item() * share
            divergence_sum += float((out.student.per_token * part.completion_mask).sum())
            if out.student.is_weight is not None:
                is_weight_sum += float((out.student.is_weight * out.student.mask).sum())
                is_weight_count += int(out.student.mask.sum())
            if sample is None:
                sample = sample_record(self.tokenizer, self.examples[indices[0]], part, out.student, out.teacher)
        return MicroBatch(loss, divergence_sum, batch.num_tokens, is_weight_sum, is_weight_count, sample,
                          sequences=int((mask.sum(-1) > 0).sum()))

    def train_step(self) -> StepRecord:
        """One optimizer step (grad_accum micro-batches); returns its record.

        A step whose loss or gradient norm is not finite is skipped with a warning: its gradients are
        dropped, the weights stay as they were and the data moves on to the next batch. After
        `max_bad_steps` such steps in a row, NonFiniteSteps stops the training.
        """
        limit = self.config.train.max_bad_steps
        for bad in range(1, limit + 1):
            record = self._try_step()
            if record is not None:
                return record
            warnings.warn(f"step {self.step + 1}: the loss or the gradients were not finite; skipped it, the weights "
                          f"are unchanged ({bad} of at most {limit} in a row)", RuntimeWarning, stacklevel=2)
        raise NonFiniteSteps.after(self.step, limit, self.run.path / CHECKPOINT if self.run and self.step else None)

    def _try_step(self) -> StepRecord | None:
        """One optimizer step and its record; None (nothing applied) if the loss or gradients are not finite."""
        cfg = self.config
        start = time.perf_counter()
        seconds = {"rollout": 0.0, "teacher": 0.0, "student": 0.0, "optimizer": 0.0}
        self.model.train()
        parts = [self._micro_batch(seconds) for _ in range(cfg.train.grad_accum)]
        loss = sum(p.loss for p in parts) / len(parts)
        sums = [sum(p.divergence_sum for p in parts), sum(p.tokens for p in parts),
                sum(p.is_weight_sum for p in parts), sum(p.is_weight_count for p in parts)]
        if self.processes.world > 1:  # the whole global batch's step, identical in every process
            counted = sum(p.sequences for p in parts)
            total, weighted, *sums = self.processes.sum([counted, counted * loss, *sums])
            self.processes.combine_gradients(list(lora_parameters(self.model).values()), counted, total)
            loss = weighted / max(total, 1)
        lr = self.scheduler.get_last_lr()[0]
        opt_start = time.perf_counter()
        grad_norm = (optimizer_step(self.model, self.optimizer, self.scheduler, cfg.train.max_grad_norm)
                     if math.isfinite(loss) else math.nan)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.elapsed += time.perf_counter() - start
            return None
        self.teacher.after_step()
        if self.engine is not None:
            self.engine.after_step()
        seconds["optimizer"] = time.perf_counter() - opt_start
        self.step += 1
        total = time.perf_counter() - start
        self.elapsed += total
        return step_record(self, loss, lr, grad_norm, sums, seconds, total, parts[0].sample)

    def steps(self, instruments: list[driver.Instrument] | tuple = ()) -> Iterator[StepRecord]:
        """Train to `config.train.steps`, yielding each step's record (see driver.steps: records, checkpoints)."""
        return driver.steps(self, instruments)

    def train(self, progress: bool = True, on_record=None) -> list[StepRecord]:
        """Run all steps with a progress bar (see driver.train); returns the records, each also given to
        `on_record`."""
        return driver.train(self, progress=progress, on_record=on_record).records

    def stop(self) -> None:
        """Make steps() stop after the step under way, with a checkpoint of it (safe to call from a signal handler)."""
        self.stop_requested = True

    def close(self) -> None:
        """Unlock the run directory (steps() does so when it ends); leave the process group, if any."""
        if self.run is not None:
            self.run.release()
        self.processes.close()

    # -- saving and resuming --
    def save_checkpoint(self) -> Path:
        """Write checkpoint/ whole (checkpoint.write_state: adapter, optimizer, scheduler, teacher, RNG, data
        position), so that a crash at any moment, or a full disk, leaves a complete checkpoint."""
        if self.run is None:
            raise ValueError("this Trainer has no run directory (out_dir) to save a checkpoint in")
        # Rollouts sampled for later steps are not kept: a resumed run samples them again, from its data position.
        unused = len(self.pending) * self.config.train.batch_size * self.processes.world
        progress = {"step": self.step, "examples_seen": self.order.seen - unused, "elapsed_s": self.elapsed}
        path = self.run.save(CHECKPOINT, lambda folder: write_state(folder, self.model, self.optimizer,
                                                                    self.scheduler, self.teacher, progress), self.step)
        self.saved_step = self.step
        return path

    def checkpoint_if_behind(self) -> None:
        if self.run is not None and self.saved_step != self.step:
            self.save_checkpoint()

    def load_checkpoint(self, checkpoint: Path) -> None:
        if self.config.teacher.teacher == "ema" and holds_lora_factors(checkpoint, self.model):
            # Saved before 'ema' meant the EMA of the weights: the run goes on with the factor EMA it started with.
            warnings.warn(f"{checkpoint}: this run's 'ema' teacher averaged the LoRA factors (sdft-kit before the "
                          "weight EMA); it continues as teacher 'factor_ema'", stacklevel=2)
            self.teacher = make_teacher(self.model, replace(self.config.teacher, teacher="factor_ema"))
        progress = read_state(checkpoint, self.model, self.optimizer, self.scheduler, self.teacher)
        self.step, self.order.seen, self.elapsed = progress["step"], progress["examples_seen"], progress["elapsed_s"]
        self.saved_step = self.step


def step_record(trainer: Trainer, loss: float, lr: float, grad_norm: float, sums: list, seconds: dict[str, float],
                total: float, sample: dict | None) -> StepRecord:
    """A step's record (records.StepRecord) from its figures; sums: divergence, tokens, importance weights and
    their count, over the global batch."""
    divergence_sum, tokens, is_weight_sum, is_weight_count = sums
    cfg, engine = trainer.config, trainer.engine
    return {"step": trainer.step, "steps": cfg.train.steps, "method": trainer.method.name, "loss": loss,
            "mean_kl": divergence_sum / max(tokens, 1) if trainer.method.uses_teacher else None, "lr": lr,
            "grad_norm": grad_norm, "is_weight": is_weight_sum / is_weight_count if is_weight_count else None,
            "tokens": int(tokens), "engine": engine.name if engine is not None else None,
            "processes": trainer.processes.world,
            "global_batch": cfg.train.batch_size * cfg.train.grad_accum * trainer.processes.world,
            "seconds": {**{k: round(v, 4) for k, v in seconds.items()}, "total": round(total, 4)},
            "elapsed_s": round(trainer.elapsed, 3), "peak_mem_mb": round(peak_memory_mb(trainer.device), 1),
            "sample": sample}
