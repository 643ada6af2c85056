"""The teacher: who scores the student's tokens, as one object per kind with one lifecycle.

    view()          context in which a model computes as the teacher (yields that model)
    after_step()    called after every optimizer step (the EMA moves towards the student)
    state_dict()    what a checkpoint must keep to resume it, and load_state_dict() back

The three kinds of `teacher.teacher` are views of the one model in memory, never a second copy:
    base  the adapter disabled (the frozen starting model);
    ema   the adapter's weights swapped for their exponential moving average (the paper's);
    live  the current student itself, without gradient.
Only the LoRA tensors are ever copied (for the EMA), a few MB at most.
Adding a kind: a class here with the four methods of `Teacher`, its name in config.TeacherKind, a branch
in `make_teacher`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch

from .config import TEACHER_KINDS, TeacherConfig
from .models import lora_parameters


class Teacher(Protocol):
    def view(self) -> contextlib.AbstractContextManager[torch.nn.Module]: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class FrozenTeacher:
    """The starting model (kind 'base'): the student with its adapter disabled."""

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def view(self) -> Iterator[torch.nn.Module]:
        with self.model.disable_adapter():
            yield self.model

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


class LiveTeacher(FrozenTeacher):
    """The current student itself (unstable in the paper's ablation; here for comparison)."""

    @contextlib.contextmanager
    def view(self) -> Iterator[torch.nn.Module]:
        yield self.model


class EMATeacher(FrozenTeacher):
    """An exponential moving average of the adapter, swapped in for teacher passes."""

    def __init__(self, model, rate: float = 0.01):
        super().__init__(model)
        self.rate = rate
        self.shadow = {name: p.detach().clone() for name, p in lora_parameters(model).items()}

    @torch.no_grad()
    def after_step(self) -> None:
        for name, p in lora_parameters(self.model).items():
            self.shadow[name].lerp_(p.detach(), self.rate)  # shadow += rate * (p - shadow)

    @contextlib.contextmanager
    def view(self) -> Iterator[torch.nn.Module]:
        params = lora_parameters(self.model)
        # Swap storage pointers both ways: no copy, and the optimizer keeps its params.
        for name, p in params.items():
            p.data, self.shadow[name] = self.shadow[name], p.data
        try:
            yield self.model
        finally:
            for name, p in params.items():
                p.data, self.shadow[name] = self.shadow[name], p.data

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)


def make_teacher(model, config: TeacherConfig | None = None) -> Teacher:
    """The teacher of `config.teacher` (one of config.TEACHER_KINDS) over the student `model`."""
    config = config or TeacherConfig()
    if config.teacher == "base":
        return FrozenTeacher(model)
    if config.teacher == "ema":
        return EMATeacher(model, config.ema_rate)
    if config.teacher == "live":
        return LiveTeacher(model)
    raise ValueError(f"teacher must be one of {', '.join(TEACHER_KINDS)}; got {config.teacher!r}")
