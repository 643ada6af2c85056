"""The teacher: who scores the student's tokens, as one object per kind with one lifecycle.

    view()          context in which a model computes as the teacher (yields that model)
    after_step()    called after every optimizer step (an EMA moves towards the student)
    state_dict()    what a checkpoint must keep to resume it, and load_state_dict() back

Every kind of `teacher.teacher` is a view of the one model in memory, never a second copy
of the base weights; only adapter-sized state is kept:
    base        the adapter disabled (the frozen starting model);
    ema         an exponential moving average of the student's *weights* W0 + s*B*A, the
                paper's teacher: each adapted layer keeps the EMA of its weight delta s*B*A,
                dense (exact) or as a rank-k truncation (`ema_rank`), and the teacher pass
                adds that delta to the base layer in place of the student's LoRA;
    factor_ema  the EMA of the LoRA factors A and B taken separately (sdft-kit's earlier 'ema',
                TRL's for PEFT): EMA(B) EMA(A) is not EMA(B A) (see docs/fidelity.md);
    live        the current student itself, without gradient.
`anchor` pulls the weight EMA back toward the base after every update.
Adding a kind: a class here with the four methods of `Teacher`, its name in config.TeacherKind, a branch
in `make_teacher`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from .config import TEACHER_KINDS, TeacherConfig
from .models import lora_parameters


class Teacher(Protocol):
    def view(self) -> contextlib.AbstractContextManager[torch.nn.Module]: ...
    def after_step(self) -> None: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class FrozenTeacher:
    """The starting model: the student with its adapter disabled (kind 'base')."""

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


class FactorEMATeacher(FrozenTeacher):
    """The EMA of the LoRA factors A and B, each on its own, swapped in for teacher passes (kind 'factor_ema').

    Not the EMA of the weights: the teacher's delta is EMA(B) EMA(A), which drifts from EMA(B A) as A moves.
    Kept for comparison and for runs made before the weight EMA existed."""

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
        _check_keys(state, self.shadow, "factor_ema")
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)


# -- the weight EMA ---------------------------------------------------------------------------------------------

def lora_layers(model) -> dict[str, torch.nn.Module]:
    """The adapted linear layers (peft LoRA layers with the 'default' adapter) by module name."""
    from peft.tuners.lora import LoraLayer

    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A}
    if not layers:
        raise ValueError("the model has no LoRA adapter: wrap it with add_lora() first")
    for name, layer in layers.items():
        if not isinstance(layer.lora_A["default"], torch.nn.Linear) or layer.fan_in_fan_out:
            raise ValueError(f"teacher 'ema' averages the weights of linear LoRA layers; {name} is another kind: "
                             "use --teacher factor_ema or base")
    return layers


def student_delta(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's LoRA update s*B*A as its two factors (s*B (d_out, r), A (r, d_in)), float32, no gradient."""
    scale = layer.scaling["default"]
    return scale * layer.lora_B["default"].weight.detach().float(), layer.lora_A["default"].weight.detach().float()


class DenseDelta:
    """The exact EMA of a layer's weight delta: one d_out x d_in float32 matrix."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor):
        self.delta = left @ right

    def update(self, left: torch.Tensor, right: torch.Tensor, rate: float, keep: float) -> None:
        """delta <- keep * ((1 - rate) * delta + rate * left @ right)."""
        self.delta.mul_(keep * (1 - rate)).addmm_(left, right, alpha=keep * rate)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta.to(x.dtype))

    def full(self) -> torch.Tensor:
        return self.delta

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.delta = tensors["delta"].to(self.delta.device, torch.float32, copy=True)


class LowRankDelta:
    """The EMA of a layer's weight delta kept at rank k: delta ~ U V, U (d_out, k), V (k, d_in), float32.

    Each update stacks the factors of (1 - rate) U V and rate * s B A (rank k + r), and truncates the
    sum back to its best rank-k approximation through two thin QRs and the SVD of a (k+r) x (k+r) core.
    Exact while the delta's rank is at most k (e.g. the first k/r steps); V keeps orthonormal rows.
    """

    def __init__(self, left: torch.Tensor, right: torch.Tensor, rank: int):
        r = left.shape[1]
        if rank < r:
            raise ValueError(f"ema_rank must give at least the LoRA rank {r}; got rank {rank}")
        self.U = F.pad(left, (0, rank - r))
        self.V = F.pad(right, (0, 0, 0, rank - r))

    def update(self, left: torch.Tensor, right: torch.Tensor, rate: float, keep: float) -> None:
        rank = self.U.shape[1]
        q_left, r_left = torch.linalg.qr(torch.cat([(1 - rate) * self.U, rate * left], 1))
        q_right, r_right = torch.linalg.qr(torch.cat([self.V, right], 0).T)
        u, s, vh = torch.linalg.svd(r_left @ r_right.T)
        self.U = q_left @ (u[:, :rank] * (keep * s[:rank]))
        self.V = vh[:rank] @ q_right.T

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V.to(x.dtype)), self.U.to(x.dtype))

    def full(self) -> torch.Tensor:
        return self.U @ self.V

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"U": self.U, "V": self.V}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.U = tensors["U"].to(self.U.device, torch.float32, copy=True)
        self.V = tensors["V"].to(self.V.device, torch.float32, copy=True)


class WeightEMATeacher:
    """The EMA of the student's weights W0 + s*B*A (kind 'ema'): the paper's teacher, for a LoRA student.

    W0 is shared and constant, so the EMA of the weights is W0 + the EMA of each adapted layer's delta,
    which starts at the student's delta (zero for a fresh adapter) and after every step becomes
        delta <- (1 - anchor) * ((1 - rate) * delta + rate * s * B * A).
    rank 0 keeps each delta dense (exact; a d_out x d_in float32 matrix per adapted layer); rank k > 0 keeps
    its best rank-(k * LoRA rank) approximation (`LowRankDelta`). The teacher pass disables the student's
    adapter and adds the delta to each adapted layer's output (a forward hook): no weight is copied or changed.
    """

    def __init__(self, model, rate: float = 0.01, rank: int = 0, anchor: float = 0.0):
        self.model, self.rate, self.keep = model, rate, 1.0 - anchor
        self.layers = lora_layers(model)
        self.deltas = {}
        for name, layer in self.layers.items():
            left, right = student_delta(layer)
            self.deltas[name] = DenseDelta(left, right) if rank == 0 else LowRankDelta(left, right,
                                                                                          rank * left.shape[1])

    @torch.no_grad()
    def after_step(self) -> None:
        for name, layer in self.layers.items():
            self.deltas[name].update(*student_delta(layer), self.rate, self.keep)

    @contextlib.contextmanager
    def view(self) -> Iterator[torch.nn.Module]:
        def adds(delta):
            return lambda module, args, output: output + delta.apply(args[0])

        with self.model.disable_adapter():
            hooks = [layer.register_forward_hook(adds(self.deltas[name])) for name, layer in self.layers.items()]
            try:
                yield self.model
            finally:
                for hook in hooks:
                    hook.remove()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{key}": tensor for name, delta in self.deltas.items()
                for key, tensor in delta.tensors().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        _check_keys(state, self.state_dict(), "ema")
        for name, delta in self.deltas.items():
            delta.load({key: state[f"{name}.{key}"] for key in delta.tensors()})


def _check_keys(state: dict[str, torch.Tensor], mine: dict[str, torch.Tensor], kind: str) -> None:
    """A checkpoint's teacher state must be this kind's, with the same shapes (same adapter, same ema_rank)."""
    if state.keys() != mine.keys() or any(state[k].shape != mine[k].shape for k in mine):
        raise ValueError(f"the checkpoint's teacher state does not match teacher '{kind}' with these settings (it was "
                         "saved by another teacher kind, ema_rank or adapter; runs from before the weight EMA used "
                         "'factor_ema'): resume with the teacher settings the run was started with")


# The teacher kinds: each name's builder over the student model and the teacher config. A new kind is one
# register_teacher call (here, or in your own code); its name then becomes a valid `teacher` setting.
TEACHERS: dict[str, Callable[[Any, TeacherConfig], Teacher]] = {}


def register_teacher(name: str, build: Callable[[Any, TeacherConfig], Teacher]) -> None:
    """Add a teacher kind: `build(model, teacher_config)` returns it (and config.TEACHER_KINDS names it)."""
    TEACHERS[name] = build
    if name not in TEACHER_KINDS:
        TEACHER_KINDS.append(name)


register_teacher("base", lambda model, c: FrozenTeacher(model))
register_teacher("ema", lambda model, c: WeightEMATeacher(model, c.ema_rate, c.ema_rank, c.anchor))
register_teacher("factor_ema", lambda model, c: FactorEMATeacher(model, c.ema_rate))
register_teacher("live", lambda model, c: LiveTeacher(model))


def make_teacher(model, config: TeacherConfig | None = None) -> Teacher:
    """The teacher of `config.teacher` (one of config.TEACHER_KINDS) over the student `model`."""
    config = config or TeacherConfig()
    if config.teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {', '.join(TEACHER_KINDS)}; got {config.teacher!r}")
    return TEACHERS[config.teacher](model, config)
