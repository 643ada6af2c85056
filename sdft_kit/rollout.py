"""Step 2, rollout: the student samples its own answers to the queries.

A `Completions` batch is the layout every later step works on:
    [ left-padded prompt (B, P) | completion (B, C), right-padded after EOS ]
SFT uses the same layout with the demonstration as the completion, so scoring and
the update are shared by both methods.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .config import RolloutConfig
from .demos import render


@dataclass
class Completions:
    prompt_ids: torch.Tensor  # (B, P), left-padded
    prompt_mask: torch.Tensor  # (B, P), 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C), 1 up to and including the first EOS

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, rows: slice) -> Completions:
        """A sub-batch of rows, with columns that are padding in all of them dropped."""
        prompt_ids, prompt_mask = trim_left(self.prompt_ids[rows], self.prompt_mask[rows])
        mask = self.completion_mask[rows]
        width = int(mask.sum(-1).max())
        return Completions(prompt_ids, prompt_mask, self.completion_ids[rows, :width], mask[:, :width])

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
    with merged_lora(model):
        sequences = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=config.max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos_ids(model, tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    model.train(was_training)
    completion_ids = sequences[:, prompt_ids.shape[1]:]
    completion_mask = mask_after_eos(completion_ids, eos_ids(model, tokenizer))
    # Padding after EOS is whatever generate wrote; make it the pad id for readability.
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return Completions(prompt_ids, prompt_mask, completion_ids, completion_mask)


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
