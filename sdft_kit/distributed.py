"""Data-parallel training over several processes, launched by accelerate (or torchrun).

    accelerate launch --multi_gpu --num_processes 2 -m sdft_kit.cli train --data d.jsonl --out run

Every process holds the whole model and trains on its own shard of each global batch
(`train.batch_size` records per process): it rolls out, scores and back-propagates its
shard alone. Once per optimizer step the LoRA gradients are combined across processes,
weighted by each process's counted sequences, so the step is exactly the one a single
process would take on the whole global batch. Every process then takes the same
optimizer step, so the LoRA weights and the EMA teacher stay identical everywhere
without being sent around. Process 0 alone writes the run directory.

The gradients are combined with one all-reduce of a flat buffer per step (accelerate's
`reduce`) rather than by wrapping the model in DistributedDataParallel: DDP reduces on
every backward pass, and a step here runs a data-dependent number of chunked backward
passes per process, which DDP would need to match across processes.

A training process ends with its launcher: if the launcher dies (even by kill -9), Linux sends each
process SIGTERM, which stops training after the step under way with a checkpoint, as Ctrl-C does
(`follow_launcher`); without it the processes would train on, holding the run's lock. And a launch
that starts one process where several were asked for (`accelerate launch --cpu --num_processes 2`)
is refused instead of training alone.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field

import torch


@dataclass
class Processes:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    state: object = field(default=None, repr=False)  # accelerate's PartialState when world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """This process's contiguous share of a global batch's indices."""
        size = len(indices) // self.world
        return indices[self.rank * size:(self.rank + 1) * size]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums of `values` over the processes."""
        if self.world == 1:
            return list(values)
        from accelerate.utils import reduce

        return reduce(torch.tensor(values, dtype=torch.float64, device=self._device()), "sum").tolist()

    def combine_gradients(self, parameters: list[torch.Tensor], weight: float, total: float) -> None:
        """Set every process's gradients to the sum over processes of weight * gradient, / total."""
        if self.world == 1:
            return
        from accelerate.utils import reduce

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1).float() for g in grads]).to(self._device()) * weight
        flat = reduce(flat, "sum") / max(total, 1e-12)
        offset = 0
        for p, g in zip(parameters, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(p.dtype).to(p.device)
            offset += g.numel()

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any (e.g. a stop request seen by one)."""
        return bool(self.sum([float(flag)])[0]) if self.world > 1 else flag

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            self.state.destroy_process_group()

    def _device(self) -> torch.device:
        return self.state.device


def world_size() -> int:
    """How many training processes were launched (accelerate launch / torchrun set WORLD_SIZE); 1 in a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def follow_launcher() -> None:
    """Have Linux send this process SIGTERM when its parent, the launcher, dies (prctl PR_SET_PDEATHSIG).

    Called before the processes connect to each other; a launcher already gone by then (this process
    was handed to init, pid 1) gets the same SIGTERM at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)


def refuse_a_lone_process() -> None:
    """ValueError when a launcher asked for several processes but started this one alone.

    `accelerate launch --cpu --num_processes N` runs the script once, leaving several CPU processes to
    mpirun; it sets MASTER_PORT (for N > 1) but no WORLD_SIZE, so this process would train alone."""
    on_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1")
    if on_cpu and "MASTER_PORT" in os.environ and world_size() <= 1:
        raise ValueError("`accelerate launch --cpu` starts one training process, however many --num_processes "
                         "asks for (accelerate leaves several CPU processes to mpirun), so this one would train "
                         "alone. For several processes on CPUs use `accelerate launch --multi_gpu --num_processes N "
                         "...`: without GPUs they train on the CPU over gloo (README, Scaling up); for one, leave "
                         "out --num_processes")


def launched_processes() -> Processes:
    """The processes this one was launched among."""
    if world_size() <= 1:
        refuse_a_lone_process()
        return Processes()
    follow_launcher()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPUs, nccl on GPUs
    return Processes(state.process_index, state.num_processes, state.local_process_index, state)


def process_device(device: str, processes: Processes) -> str:
    """A model device for this process: each GPU process takes its own GPU when the device is automatic."""
    if processes.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{processes.local_rank}"
    return device
