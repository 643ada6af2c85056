"""Step 2, rollout: the student samples its own answers to the queries.

A `Completions` batch is the layout every later step works on:
    [ left-padded prompt (B, P) | completion (B, C), right-padded after EOS ]
SFT uses the same layout with the demonstration as the completion, so scoring and
the update are shared by both methods.

Decoding is bound by reading the weights once per token. `rollout.weights='int8'`
samples from an int8 copy of the current student instead (a quarter of the bytes);
the copy is built per rollout and freed after it, and the log-probs of the sampled
tokens under it are kept so the loss can correct for the mismatch (see update.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

from .config import RolloutConfig
from .demos import render


@dataclass
class Completions:
    prompt_ids: torch.Tensor  # (B, P), left-padded
    prompt_mask: torch.Tensor  # (B, P), 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C), 1 up to and including the first EOS
    # For rollouts sampled from other weights (int8): log q(token) under the sampler, at
    # the sampling temperature, (B, C). None when the student itself sampled.
    sampler_logprobs: torch.Tensor | None = None
    temperature: float = 1.0

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, rows: slice) -> Completions:
        """A sub-batch of rows, with columns that are padding in all of them dropped."""
        prompt_ids, prompt_mask = trim_left(self.prompt_ids[rows], self.prompt_mask[rows])
        mask = self.completion_mask[rows]
        width = int(mask.sum(-1).max())
        sampler = None if self.sampler_logprobs is None else self.sampler_logprobs[rows, :width]
        return Completions(prompt_ids, prompt_mask, self.completion_ids[rows, :width], mask[:, :width], sampler,
                           self.temperature)

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return [
            tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(self.completion_ids, self.completion_mask)
        ]


def trim_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row of a left-padded batch."""
    first = int(mask.any(0).long().argmax())
    return ids[:, first:], mask[:, first:]


def is_quantized(model) -> bool:
    return getattr(model.config, "quantization_config", None) is not None


@contextlib.contextmanager
def merged_lora(model):
    """Fold the LoRA update into the base weights while decoding.

    Each adapted layer then does one matmul per token instead of three, with the
    same weights in memory (W + BA in place, subtracted again on exit; in float32 the
    round trip changes W by float rounding only, ~1e-7). Skipped for models without an
    adapter, for 4-bit bases (merging would re-quantize) and for 16-bit bases, where
    each round trip would move the frozen weights by a 16-bit rounding step.
    """
    if (not callable(getattr(model, "merge_adapter", None)) or is_quantized(model)
            or getattr(model, "dtype", torch.float32) != torch.float32):
        yield
        return
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


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

    The copy is made from W + scaling * B @ A row block by row block, so the model's
    own weights are never written; each layer's forward is swapped for an int8 matmul
    (bf16 activations) and restored on exit. CPU only.
    """
    from peft.tuners.lora import Linear as LoraLinear

    if next(model.parameters()).device.type != "cpu" or is_quantized(model):
        raise ValueError("rollout.weights='int8' is a CPU option for float models; on a GPU keep "
                         "rollout.weights='exact' (the 4-bit or 16-bit base is already compact)")
    inside_lora, targets = set(), []
    for module in model.modules():
        if isinstance(module, LoraLinear):
            inside_lora.update(id(m) for m in module.modules() if m is not module)
            if any(module.use_dora.get(a, False) for a in module.active_adapters):
                raise ValueError("rollout.weights='int8' does not support DoRA adapters")
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


def eos_ids(model, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends an answer (chat models often have several)."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def mask_after_eos(completion_ids: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """1 for tokens up to and including the first EOS; all tokens if none ended."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos, device=completion_ids.device))
    ended_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # an EOS strictly earlier
    return (~ended_before).long()


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device):
    """Left-padded ids and mask of chat-rendered prompts (the template adds specials)."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


@torch.no_grad()
def rollout(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: RolloutConfig | None = None,
            *, do_sample: bool = True) -> Completions:
    """Sample `generations_per_prompt` completions per prompt from the current student.

    Returned rows are grouped by prompt: row i belongs to prompt i // generations.
    """
    config = config or RolloutConfig()
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, device)
    n = config.generations_per_prompt
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
    was_training = model.training
    model.eval()
    sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": 0} if do_sample else {}
    int8 = config.weights == "int8"
    temperature = config.temperature if do_sample else 1.0
    recorder = SampledLogprobs(temperature) if int8 else None
    try:
        with int8_weights(model) if int8 else merged_lora(model):
            sequences = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=config.max_new_tokens,
                do_sample=do_sample,
                eos_token_id=eos_ids(model, tokenizer),
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([recorder]) if recorder else None,
                **sampling,
            )
    finally:
        model.train(was_training)
    completion_ids = sequences[:, prompt_ids.shape[1]:]
    completion_mask = mask_after_eos(completion_ids, eos_ids(model, tokenizer))
    # Padding after EOS is whatever generate wrote; make it the pad id for readability.
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    sampler = recorder.finish(sequences) if recorder else None
    return Completions(prompt_ids, prompt_mask, completion_ids, completion_mask, sampler, temperature)


def demonstration_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], demonstrations: list[str],
                        device: torch.device) -> Completions:
    """The SFT targets in the rollout layout: each demonstration followed by EOS."""
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, device)
    targets = [tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for d in demonstrations]
    width = max(len(t) for t in targets)
    completion_ids = torch.full((len(targets), width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((len(targets), width), dtype=torch.long)
    for row, ids in enumerate(targets):
        completion_ids[row, : len(ids)] = torch.tensor(ids)
        completion_mask[row, : len(ids)] = 1
    return Completions(prompt_ids, prompt_mask, completion_ids.to(device), completion_mask.to(device))


def generate_text(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int = 64,
                  *, do_sample: bool = False, temperature: float = 1.0) -> list[str]:
    """Answers to chat-rendered prompts (greedy by default), as text."""
    config = RolloutConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    return rollout(model, tokenizer, prompts, config, do_sample=do_sample).texts(tokenizer)


def chat(model, tokenizer: PreTrainedTokenizerBase, message: str | list[dict], max_new_tokens: int = 96,
         *, system: str | None = None, temperature: float = 0.0) -> str:
    """The model's answer to one user message (or a list of chat messages); greedy unless temperature > 0."""
    messages = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return generate_text(model, tokenizer, [render(tokenizer, messages)], max_new_tokens, do_sample=temperature > 0,
                         temperature=temperature or 1.0)[0]
