"""The int8 rollout engine: decode from an int8 copy of the current student (CPU only).

Decoding is bound by reading the weights once per token; an int8 copy is a quarter of
float32's bytes. The copy is built per rollout from W + scaling * B @ A (LoRA folded in),
row block by row block, and freed after it; the model's own weights are never written.
Because it samples from a slightly different policy, it records the log-prob of each
sampled token under the int8 weights, and the loss weights each token by
min(p_student / p_int8, loss.is_cap) (see update.importance_weights).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import LogitsProcessor

from .models import is_quantized
from .rollout import HFEngine


def _int8_rows(rows_of, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row, built in blocks of ~128 KiB of float32 rows.

    Small blocks never need a full-size float temporary, and stay under glibc's mmap
    threshold (see models.release_freed_memory), so they reuse memory without page faults.
    """
    q = torch.empty(shape, dtype=torch.int8)
    scales = torch.empty(shape[0])
    chunk = max(1, 32768 // shape[1])
    for lo in range(0, shape[0], chunk):
        w = rows_of(lo, min(lo + chunk, shape[0]))  # a fresh float32 tensor
        s = w.abs().amax(1).clamp_(min=1e-12).div_(127)
        q[lo:lo + len(w)] = w.div_(s[:, None]).round_()
        scales[lo:lo + len(w)] = s
    return q, scales.to(torch.bfloat16)


def _int8_forward(q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
    def forward(x, *args, **kwargs):
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, q, scales).reshape(*x.shape[:-1], -1).to(x.dtype)
        return y if bias is None else y + bias
    return forward


@contextlib.contextmanager
def int8_weights(model):
    """Decode with an int8 copy of every linear layer's current weights (LoRA folded in).

    Each layer's forward is swapped for an int8 matmul (bf16 activations) and restored on exit.
    """
    from peft.tuners.lora import Linear as LoraLinear

    if next(model.parameters()).device.type != "cpu" or is_quantized(model):
        raise ValueError("rollout.engine='int8' is a CPU option for float models; on a GPU keep "
                         "rollout.engine='hf' (the 4-bit or 16-bit base is already compact)")
    inside_lora, targets = set(), []
    for module in model.modules():
        if isinstance(module, LoraLinear):
            inside_lora.update(id(m) for m in module.modules() if m is not module)
            if any(module.use_dora.get(a, False) for a in module.active_adapters):
                raise ValueError("rollout.engine='int8' does not support DoRA adapters")
            targets.append(module)
        elif isinstance(module, torch.nn.Linear) and id(module) not in inside_lora:
            targets.append(module)
    with torch.no_grad():
        for module in targets:
            lora = isinstance(module, LoraLinear)
            layer = module.get_base_layer() if lora else module
            adapters = [a for a in module.active_adapters if a in module.lora_A] \
                if lora and not (module.disable_adapters or module.merged) else []

            def rows_of(lo, hi, w=layer.weight, module=module, adapters=adapters):
                out = w[lo:hi].to(torch.float32, copy=True)
                for a in adapters:
                    out.addmm_(module.lora_B[a].weight[lo:hi].float(), module.lora_A[a].weight.float(),
                               alpha=module.scaling[a])
                return out
            module.forward = _int8_forward(*_int8_rows(rows_of, layer.weight.shape), layer.bias)
    try:
        yield
    finally:
        for module in targets:
            del module.forward  # back to the class's forward


class SampledLogprobs(LogitsProcessor):
    """Records log q(token) of each sampled token under the sampler, at temperature T.

    Called by `generate` before each sampling step with the sequences so far: the
    previous step's token is read off then, and the last one in `finish`.
    """

    def __init__(self, temperature: float = 1.0):
        self.temperature, self.last, self.values = temperature, None, []

    def _take(self, tokens: torch.Tensor) -> None:
        if self.last is not None:
            self.values.append(self.last.gather(-1, tokens[:, None]).squeeze(-1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.last = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        self._take(sequences[:, -1])
        self.last = None
        return torch.stack(self.values, dim=1)


class Int8Engine(HFEngine):
    """`generate` on a per-rollout int8 copy of the student, recording the sampler's log-probs."""

    def decoding(self):
        return int8_weights(self.model)

    def sampler_logprobs(self, temperature: float) -> SampledLogprobs:
        return SampledLogprobs(temperature)
