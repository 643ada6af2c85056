"""The training loop: the four steps composed, one record per optimizer step.

    for each micro-batch:
        prompts   = student_prompt(ex), teacher_prompt(ex, demos)      # 1 demo selection
        batch     = engine.sample(prompts)                             # 2 rollout
        objective = sdft_objective(model, teacher, batch)              # 3 teacher scoring, 4 update
        objective.student.loss.backward()
    optimizer_step(); teacher.after_step(); engine.after_step()

A run directory holds config.yaml, metrics.jsonl (one JSON record per step, see
records.py), adapter/ (PEFT format) and checkpoint/ (adapter + optimizer + scheduler +
teacher state + data position) to resume from.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .batch import Completions, demonstration_batch
from .config import Config
from .data import Example
from .demos import DemoSelector, student_prompt, teacher_prompt
from .losses import chunk_shares
from .models import add_lora, load_model, peak_rss_mb, release_freed_memory, set_threads
from .records import SampleRecord, StepRecord, append_record, load_records, sample_record  # noqa: F401 (re-exported)
from .rollout import make_engine
from .teachers import make_teacher
from .update import loss_mask, make_optimizer, optimizer_step, sdft_objective, sft_objective


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


class Trainer:
    """Holds the state of a run (model, optimizer, teacher, rollout engine, data position)."""

    def __init__(self, config: Config, examples: list[Example], out_dir: str | Path | None = None, *,
                 model=None, tokenizer=None, resume: bool = False):
        if not examples:
            raise ValueError("no training examples")
        self.config, self.examples = config, examples
        train = config.train
        set_threads(train.threads)
        torch.manual_seed(train.seed)
        if model is None:
            base, tokenizer = load_model(config.model.model, config.model)
            model = add_lora(base, config.model, seed=train.seed)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        if train.release_memory and self.device.type == "cpu":
            release_freed_memory()
        self.optimizer, self.scheduler = make_optimizer(model, train)
        self.teacher = make_teacher(config.teacher.teacher, model, ema_rate=config.teacher.ema_rate)
        self.engine = make_engine(model, tokenizer, config.rollout) if train.method == "sdft" else None
        self.objective = sdft_objective if train.method == "sdft" else sft_objective
        self.selector = DemoSelector(examples, config.teacher.demo_selection, config.teacher.num_demos, train.seed)
        self.step, self.examples_seen, self.elapsed = 0, 0, 0.0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out_dir is not None:
            self._open_run_dir(resume)

    # -- data order: a seeded permutation per epoch, so resuming needs only a count --
    def _next_indices(self, count: int) -> list[int]:
        n = len(self.examples)
        indices = []
        for position in range(self.examples_seen, self.examples_seen + count):
            order = random.Random(self.config.train.seed * 100_003 + position // n).sample(range(n), n)
            indices.append(order[position % n])
        self.examples_seen += count
        return indices

    def peek_indices(self) -> list[int]:
        """The example indices of the next micro-batch, without moving the data position."""
        seen = self.examples_seen
        indices = self._next_indices(self.config.train.batch_size)
        self.examples_seen = seen
        return indices

    def make_batch(self, indices: list[int]) -> Completions:
        """The batch of these examples: SFT's demonstrations, or SDFT's rollouts with their teacher prompts."""
        cfg, tokenizer = self.config, self.tokenizer
        examples = [self.examples[i] for i in indices]
        prompts = [student_prompt(tokenizer, ex) for ex in examples]
        if self.engine is None:
            return demonstration_batch(tokenizer, prompts, [ex.demonstration for ex in examples], self.device)
        batch = self.engine.sample(prompts)
        n = cfg.rollout.generations_per_prompt
        return batch.with_teacher_prompts(tokenizer, [
            teacher_prompt(tokenizer, ex, self.selector.demos_for(i), cfg.teacher.template)
            for i, ex in zip(indices, examples) for _ in range(n)])

    def _micro_batch(self, seconds: dict[str, float]) -> MicroBatch:
        """Forward and backward one micro-batch; adds each phase's time to `seconds`.

        Teacher and student run on chunks of rows, so only one chunk's activations and
        full-vocabulary tensors are alive at once; each chunk's loss is weighted by its
        share of the batch (`chunk_shares`), which gives the whole batch's loss and gradients.
        """
        cfg = self.config
        indices = self._next_indices(cfg.train.batch_size)
        start = time.perf_counter()
        batch = self.make_batch(indices)
        if self.engine is not None:
            seconds["rollout"] += time.perf_counter() - start
        loss = divergence_sum = is_weight_sum = 0.0
        is_weight_count, sample = 0, None
        for rows, share in chunk_shares(loss_mask(batch, cfg.train.method, cfg.loss), cfg.train.chunk_size):
            part = batch.select(rows)
            out = self.objective(self.model, self.teacher, part, cfg)
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
        return MicroBatch(loss, divergence_sum, batch.num_tokens, is_weight_sum, is_weight_count, sample)

    def train_step(self) -> StepRecord:
        """One optimizer step (grad_accum micro-batches); returns its record."""
        cfg = self.config
        start = time.perf_counter()
        seconds = {"rollout": 0.0, "teacher": 0.0, "student": 0.0, "optimizer": 0.0}
        self.model.train()
        parts = [self._micro_batch(seconds) for _ in range(cfg.train.grad_accum)]
        lr = self.scheduler.get_last_lr()[0]
        opt_start = time.perf_counter()
        grad_norm = optimizer_step(self.model, self.optimizer, self.scheduler, cfg.train.max_grad_norm)
        self.teacher.after_step()
        if self.engine is not None:
            self.engine.after_step()
        seconds["optimizer"] = time.perf_counter() - opt_start
        self.step += 1
        total = time.perf_counter() - start
        self.elapsed += total
        tokens = sum(p.tokens for p in parts)
        weights = sum(p.is_weight_count for p in parts)
        return {
            "step": self.step,
            "steps": cfg.train.steps,
            "method": cfg.train.method,
            "loss": sum(p.loss for p in parts) / len(parts),
            "mean_kl": sum(p.divergence_sum for p in parts) / max(tokens, 1) if cfg.train.method == "sdft" else None,
            "lr": lr,
            "grad_norm": grad_norm,
            "is_weight": sum(p.is_weight_sum for p in parts) / weights if weights else None,
            "tokens": tokens,
            "seconds": {**{k: round(v, 4) for k, v in seconds.items()}, "total": round(total, 4)},
            "elapsed_s": round(self.elapsed, 3),
            "peak_mem_mb": round(peak_memory_mb(self.device), 1),
            "sample": parts[0].sample,
        }

    def steps(self) -> Iterator[StepRecord]:
        """Train to `config.train.steps`, yielding each step's record as it is made."""
        while self.step < self.config.train.steps:
            record = self.train_step()
            if self.out_dir is not None:
                append_record(self.out_dir / "metrics.jsonl", record)
                if self.step % self.config.train.save_every == 0 or self.step == self.config.train.steps:
                    self.save_checkpoint()
            yield record
        if self.out_dir is not None:
            self.save_adapter(self.out_dir / "adapter")

    def train(self, progress: bool = True, on_record=None) -> list[StepRecord]:
        """Run all steps with a progress bar; returns the records (each also given to `on_record`, e.g. a tracker's log)."""
        from tqdm.auto import tqdm

        records = []
        bar = tqdm(total=self.config.train.steps, initial=self.step, desc=self.config.train.method.upper(),
                   disable=not progress)
        for record in self.steps():
            records.append(record)
            if on_record is not None:
                on_record(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            bar.update(1)
        bar.close()
        return records

    # -- saving and resuming --
    def save_adapter(self, path: str | Path) -> Path:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        return path

    def save_checkpoint(self) -> Path:
        """Write checkpoint/ atomically: a crash mid-save keeps the previous one."""
        final = self.out_dir / "checkpoint"
        staging = self.out_dir / "checkpoint.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging / "adapter")
        torch.save({
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "teacher": self.teacher.state_dict(),
            "rng": torch.get_rng_state(),
        }, staging / "state.pt")
        (staging / "trainer_state.json").write_text(json.dumps(
            {"step": self.step, "examples_seen": self.examples_seen, "elapsed_s": self.elapsed}))
        old = self.out_dir / "checkpoint.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def _open_run_dir(self, resume: bool) -> None:
        out = self.out_dir
        checkpoint = out / "checkpoint"
        if resume:
            if not (checkpoint / "trainer_state.json").is_file():
                raise FileNotFoundError(f"{out}: no checkpoint to resume from (expected {checkpoint})")
            self._load_checkpoint(checkpoint)
            return
        if (out / "metrics.jsonl").exists() or checkpoint.exists():
            raise FileExistsError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out "
                "(nothing was overwritten)")
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / "config.yaml")

    def _load_checkpoint(self, checkpoint: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(checkpoint / "adapter" / "adapter_model.safetensors"))
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.teacher.load_state_dict(state.get("teacher", state.get("ema")) or {})  # "ema": older checkpoints
        torch.set_rng_state(state["rng"])
        progress = json.loads((checkpoint / "trainer_state.json").read_text())
        self.step, self.examples_seen, self.elapsed = progress["step"], progress["examples_seen"], progress["elapsed_s"]
        # Steps logged after the checkpoint are redone: keep the log consistent with the state.
        metrics = self.out_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [line for line in metrics.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

