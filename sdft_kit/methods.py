"""The training methods, one table: what differs between SDFT and SFT, in one entry each.

    SDFT  the student samples its own answers (rollouts); the teacher (the same model shown the
          demonstration) scores them; the loss pulls the student's per-token distribution to the teacher's
    SFT   the baseline: the demonstrations are the answers; cross-entropy of their tokens

Every place that depends on the method (the trainer's batch and objective, the loss mask, the teacher
check, the records, the model card) asks the entry (`method_of(config)`), never the method's name.

Adding a method: a `Method` entry passed to `register` (here for a built-in one, or in your own code:
tests/test_methods.py registers a toy one and trains it through the CLI). Its name then becomes a valid
`train.method` (CLI flag, YAML key, app choice).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from . import config as config_module
from .batch import Completions, demonstration_batch
from .config import Config, LossConfig
from .demos import student_prompt, teacher_prompt
from .losses import skip_first
from .update import Objective, sdft_objective, sft_objective

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass(frozen=True)
class Method:
    name: str  # the value of train.method
    title: str  # how people see it: 'SDFT'
    batch: Literal["rollout", "demonstration"]  # the completions trained on: the student's samples, or the demos
    objective: Callable[..., Objective]  # objective(model, teacher, batch, config) -> Objective (see update.py)
    uses_teacher: bool  # the teacher scores the tokens: checked before training, its figures in the records
    skips_first: bool  # the loss leaves out loss.skip_first tokens at the start of each completion
    loss_name: str  # what the loss and the per-token values measure, for records' readers and the model card
    description: str  # the model card's "trained by ..." phrase
    tags: tuple[str, ...] = ()  # the model card's tags besides 'sdft-kit' and the name

    def loss_mask(self, batch: Completions, loss: LossConfig) -> torch.Tensor:
        """The completion tokens this method's loss counts."""
        return skip_first(batch.completion_mask, loss.skip_first) if self.skips_first else batch.completion_mask


SDFT = Method(
    name="sdft", title="SDFT", batch="rollout", objective=sdft_objective, uses_teacher=True, skips_first=True,
    loss_name="KL to the teacher",
    description="Self-Distillation Fine-Tuning (SDFT, Shenfeld et al., 2026): the model, shown an expert "
                "demonstration, teaches itself on its own sampled answers",
    tags=("self-distillation",))
SFT = Method(
    name="sft", title="SFT", batch="demonstration", objective=sft_objective, uses_teacher=False, skips_first=False,
    loss_name="NLL of the demonstrations",
    description="supervised fine-tuning (SFT) on the demonstrations, sdft-kit's baseline")

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the table (and to the names train.method accepts); returns it."""
    METHODS[method.name] = method
    if method.name not in config_module.METHODS:
        config_module.METHODS.append(method.name)
    return method


for _method in (SDFT, SFT):
    register(_method)


def method_of(config: Config) -> Method:
    """The table's entry for config.train.method."""
    name = config.train.method
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {name!r} (set it with --method)")
    return METHODS[name]


def make_batch(trainer: Trainer, indices: list[int]) -> Completions:
    """The batch of these examples for the trainer's method: SDFT's rollouts with their teacher prompts, or
    SFT's demonstrations."""
    cfg, tokenizer = trainer.config, trainer.tokenizer
    examples = [trainer.examples[i] for i in indices]
    prompts = [student_prompt(tokenizer, ex) for ex in examples]
    if trainer.method.batch == "demonstration":
        return demonstration_batch(tokenizer, prompts, [ex.demonstration for ex in examples], trainer.device)
    batch = trainer.engine.sample(prompts)
    n = cfg.rollout.generations_per_prompt
    return batch.with_teacher_prompts(tokenizer, [
        teacher_prompt(tokenizer, ex, trainer.selector.demos_for(i), cfg.teacher.template)
        for i, ex in zip(indices, examples) for _ in range(n)])


def batches_per_call(config: Config, method: Method) -> int:
    """Micro-batches one rollout call samples: `steps_per_generation` steps' worth when rollouts are reused, else 1
    (each micro-batch samples its own)."""
    reuse = method.batch == "rollout" and config.rollout.steps_per_generation > 1
    return config.rollout.steps_per_generation * config.train.grad_accum if reuse else 1


def next_batches(trainer: Trainer) -> list[tuple[list[int], Completions]]:
    """The next micro-batches as (this process's example indices, batch): one, or for a method that rolls out,
    `rollout.steps_per_generation` steps' worth sampled in one engine call (the later ones reused)."""
    train, rollout = trainer.config.train, trainer.config.rollout
    count = batches_per_call(trainer.config, trainer.method)
    # Each micro-batch: the global batch's next indices, of which this process takes its contiguous share.
    groups = [trainer.processes.shard(trainer.order.take(train.batch_size * trainer.processes.world))
              for _ in range(count)]
    batch = make_batch(trainer, [i for group in groups for i in group])
    if count == 1:
        return [(groups[0], batch)]
    ends = itertools.accumulate(len(group) * rollout.generations_per_prompt for group in groups)
    return [(group, batch.select(slice(end - len(group) * rollout.generations_per_prompt, end)))
            for group, end in zip(groups, ends)]
