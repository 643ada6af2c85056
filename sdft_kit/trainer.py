"""The training loop: the four steps composed, one record per optimizer step.

    for each micro-batch:
        prompts   = student_prompt(ex), teacher_prompt(ex, demos)      # 1 demo selection
        batch     = rollout(student, prompts)                          # 2 rollout
        teacher   = score_teacher(model as teacher, batch)             # 3 teacher scoring
        loss      = distill_loss(student, batch, teacher)              # 4 update
    optimizer_step(); ema.update()

A run directory holds config.yaml, metrics.jsonl (one JSON record per step),
adapter/ (PEFT format) and checkpoint/ (adapter + optimizer + scheduler + EMA +
data position) to resume from.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .config import Config
from .data import Example
from .demos import DemoSelector, student_prompt, teacher_prompt
from .models import add_lora, load_model, peak_rss_mb, release_freed_memory
from .losses import skip_first
from .rollout import Completions, demonstration_batch, rollout, tokenize_prompts, trim_left
from .scoring import EMATeacher, TeacherScores, score_teacher
from .update import StudentScores, demonstration_loss, distill_loss, make_optimizer, optimizer_step


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: max allocated on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def sample_record(tokenizer, example: Example, batch: Completions, student: StudentScores,
                  teacher: TeacherScores | None, row: int = 0) -> dict:
    """What the views need about one completion: its tokens and both distributions."""
    keep = batch.completion_mask[row].bool()
    ids = batch.completion_ids[row][keep].tolist()

    def topk(top_ids, top_logprobs):
        return [[[tokenizer.decode([t]), round(float(lp), 5)] for t, lp in zip(i.tolist(), l.exp().tolist())]
                for i, l in zip(top_ids[row][keep], top_logprobs[row][keep])]

    def floats(t):
        return [round(float(x), 5) for x in t[row][keep].tolist()]

    return {
        "prompt": example.prompt,
        "source": example.source,
        "token_ids": ids,
        "tokens": [tokenizer.decode([t]) for t in ids],
        "values": floats(student.per_token),  # per-token divergence (SDFT) or NLL (SFT)
        "in_loss": [int(x) for x in student.mask[row][keep].tolist()],
        "student_logprob": floats(student.sampled_logprobs),
        "teacher_logprob": floats(teacher.sampled_logprobs) if teacher else None,
        "student_topk": topk(student.top_ids, student.top_logprobs),
        "teacher_topk": topk(teacher.top_ids, teacher.top_logprobs) if teacher else None,
    }


class Trainer:
    """Holds the state of a run (model, optimizer, EMA teacher, data position)."""

    def __init__(self, config: Config, examples: list[Example], out_dir: str | Path | None = None, *,
                 model=None, tokenizer=None, resume: bool = False):
        if not examples:
            raise ValueError("no training examples")
        self.config, self.examples = config, examples
        train = config.train
        if train.threads:
            torch.set_num_threads(train.threads)
        torch.manual_seed(train.seed)
        if model is None:
            base, tokenizer = load_model(config.model.model, config.model)
            model = add_lora(base, config.model, seed=train.seed)
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        if train.release_memory and self.device.type == "cpu":
            release_freed_memory()
        self.optimizer, self.scheduler = make_optimizer(model, train)
        self.ema = EMATeacher(model, config.teacher.ema_rate) if config.teacher.teacher == "ema" else None
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

    def _micro_batch(self, timings: dict, is_weights: list) -> tuple[float, float, int, dict]:
        """Forward and backward one micro-batch; returns (loss, KL sum, tokens, sample record).

        Adds (sum, count) of the importance weights over loss tokens to `is_weights`.
        """
        cfg = self.config
        indices = self._next_indices(cfg.train.batch_size)
        examples = [self.examples[i] for i in indices]
        prompts = [student_prompt(self.tokenizer, ex) for ex in examples]
        sft = cfg.train.method == "sft"
        if sft:
            batch = demonstration_batch(self.tokenizer, prompts, [ex.demonstration for ex in examples], self.device)
            loss_mask = batch.completion_mask
        else:
            start = time.perf_counter()
            batch = rollout(self.model, self.tokenizer, prompts, cfg.rollout)
            timings["rollout"] += time.perf_counter() - start
            n = cfg.rollout.generations_per_prompt
            teacher_prompts = [teacher_prompt(self.tokenizer, ex, self.selector.demos_for(i), cfg.teacher.template)
                               for i, ex in zip(indices, examples) for _ in range(n)]
            teacher_ids, teacher_mask = tokenize_prompts(self.tokenizer, teacher_prompts, self.device)
            loss_mask = skip_first(batch.completion_mask, cfg.loss.skip_first)

        # Teacher and student run on chunks of rows, so only one chunk's activations and
        # full-vocabulary tensors are alive at once. The loss is a mean over the sequences
        # that have tokens in it, so weighting each chunk by its share of them gives the
        # whole batch's loss and gradients exactly.
        counted = loss_mask.sum(-1) > 0
        total = max(int(counted.sum()), 1)
        rows = batch.completion_ids.shape[0]
        size = cfg.train.chunk_size or rows
        loss, kl_sum, sample = 0.0, 0.0, None
        for lo in range(0, rows, size):
            chunk = slice(lo, lo + size)
            part = batch.select(chunk)
            teacher = None
            if not sft:
                start = time.perf_counter()
                t_ids, t_mask = trim_left(teacher_ids[chunk], teacher_mask[chunk])
                teacher = score_teacher(self.model, t_ids, t_mask, part, kind=cfg.teacher.teacher, ema=self.ema,
                                        vocab=cfg.loss.vocab, topk=cfg.loss.topk, record_k=cfg.train.record_topk)
                timings["teacher"] += time.perf_counter() - start
            start = time.perf_counter()
            if sft:
                student = demonstration_loss(self.model, part, cfg.train.record_topk)
            else:
                student = distill_loss(self.model, part.prompt_ids, part.prompt_mask, part, teacher, cfg.loss,
                                       cfg.train.record_topk)
            weight = int(counted[chunk].sum()) / total
            (student.loss * weight / cfg.train.grad_accum).backward()
            timings["student"] += time.perf_counter() - start
            loss += student.loss.item() * weight
            kl_sum += float((student.per_token * part.completion_mask).sum())
            if student.is_weight is not None:
                is_weights[0] += float((student.is_weight * student.mask).sum())
                is_weights[1] += int(student.mask.sum())
            if sample is None:
                sample = sample_record(self.tokenizer, examples[0], part, student, teacher)
        return loss, kl_sum, batch.num_tokens, sample

    def train_step(self) -> dict:
        """One optimizer step (grad_accum micro-batches); returns its record."""
        cfg = self.config
        start = time.perf_counter()
        timings = {"rollout": 0.0, "teacher": 0.0, "student": 0.0, "optimizer": 0.0}
        self.model.train()
        losses, kl_sum, tokens, first, is_weights = [], 0.0, 0, None, [0.0, 0]
        for _ in range(cfg.train.grad_accum):
            loss, kl, n, sample = self._micro_batch(timings, is_weights)
            losses.append(loss)
            kl_sum += kl
            tokens += n
            first = first or sample
        lr = self.scheduler.get_last_lr()[0]
        opt_start = time.perf_counter()
        grad_norm = optimizer_step(self.model, self.optimizer, self.scheduler, cfg.train.max_grad_norm)
        if self.ema is not None:
            self.ema.update(self.model)
        timings["optimizer"] = time.perf_counter() - opt_start
        self.step += 1
        total = time.perf_counter() - start
        self.elapsed += total
        return {
            "step": self.step,
            "steps": cfg.train.steps,
            "method": cfg.train.method,
            "loss": sum(losses) / len(losses),
            # mean per-token divergence over every completion token (skipped ones too)
            "mean_kl": kl_sum / max(tokens, 1) if cfg.train.method == "sdft" else None,
            "lr": lr,
            "grad_norm": grad_norm,
            # mean importance weight of the loss tokens, for rollouts from int8 weights (1 = no mismatch)
            "is_weight": is_weights[0] / is_weights[1] if is_weights[1] else None,
            "tokens": tokens,
            "seconds": {**{k: round(v, 4) for k, v in timings.items()}, "total": round(total, 4)},
            "elapsed_s": round(self.elapsed, 3),
            "peak_mem_mb": round(peak_memory_mb(self.device), 1),
            "sample": first,
        }

    def steps(self) -> Iterator[dict]:
        """Train to `config.train.steps`, yielding each step's record as it is made."""
        while self.step < self.config.train.steps:
            record = self.train_step()
            if self.out_dir is not None:
                with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                if self.step % self.config.train.save_every == 0 or self.step == self.config.train.steps:
                    self.save_checkpoint()
            yield record
        if self.out_dir is not None:
            self.save_adapter(self.out_dir / "adapter")

    def train(self, progress: bool = True) -> list[dict]:
        """Run all steps with a progress bar; returns the records."""
        from tqdm.auto import tqdm

        records = []
        bar = tqdm(total=self.config.train.steps, initial=self.step, desc=self.config.train.method.upper(),
                   disable=not progress)
        for record in self.steps():
            records.append(record)
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
            "ema": self.ema.state_dict() if self.ema else None,
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
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        progress = json.loads((checkpoint / "trainer_state.json").read_text())
        self.step, self.examples_seen, self.elapsed = progress["step"], progress["examples_seen"], progress["elapsed_s"]
        # Steps logged after the checkpoint are redone: keep the log consistent with the state.
        metrics = self.out_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [line for line in metrics.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def load_records(run_dir: str | Path) -> list[dict]:
    """The step records of a run directory, for re-plotting a finished run."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
