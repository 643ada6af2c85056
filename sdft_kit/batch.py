"""The batch layout every step works on, and the helpers that build and score it.

    [ left-padded prompt (B, P) | completion (B, C), right-padded after the first end token ]

A rollout fills the completion with the student's own sample; SFT fills it with the
demonstration. For SDFT the same completion is also scored after the teacher's prompt,
which the batch carries beside the student's. Steps import this module; they never
import each other for plumbing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from .models import eval_mode


@dataclass
class Completions:
    prompt_ids: torch.Tensor  # (B, P), left-padded
    prompt_mask: torch.Tensor  # (B, P), 1 on real prompt tokens
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C), 1 up to and including the first end token
    # For rollouts sampled from other weights (vllm): log q(token) under the sampler, at
    # the sampling temperature, (B, C). None when the student itself sampled.
    sampler_logprobs: torch.Tensor | None = None
    temperature: float = 1.0
    # The teacher's prompts for the same rows (SDFT), left-padded like prompt_ids.
    teacher_prompt_ids: torch.Tensor | None = None
    teacher_prompt_mask: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def select(self, rows: slice) -> Completions:
        """A sub-batch of rows, with columns that are padding in all of them dropped."""
        prompt_ids, prompt_mask = trim_left(self.prompt_ids[rows], self.prompt_mask[rows])
        mask = self.completion_mask[rows]
        width = int(mask.sum(-1).max())
        sampler = None if self.sampler_logprobs is None else self.sampler_logprobs[rows, :width]
        teacher_ids = teacher_mask = None
        if self.teacher_prompt_ids is not None:
            teacher_ids, teacher_mask = trim_left(self.teacher_prompt_ids[rows], self.teacher_prompt_mask[rows])
        return Completions(prompt_ids, prompt_mask, self.completion_ids[rows, :width], mask[:, :width], sampler,
                           self.temperature, teacher_ids, teacher_mask)

    def with_teacher_prompts(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> Completions:
        """The same completions, also to be scored after these (chat-rendered) teacher prompts, one per row."""
        ids, mask = tokenize_prompts(tokenizer, prompts, self.prompt_ids.device)
        return dataclasses.replace(self, teacher_prompt_ids=ids, teacher_prompt_mask=mask)

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> list[str]:
        return [
            tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
            for ids, mask in zip(self.completion_ids, self.completion_mask)
        ]


def trim_left(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row of a left-padded batch."""
    first = int(mask.any(0).long().argmax())
    return ids[:, first:], mask[:, first:]


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], device: torch.device):
    """Left-padded ids and mask of chat-rendered prompts (the template adds specials)."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


_ANSWER = "\u2063sdft-kit answer\u2063"  # a text no chat template writes itself


def turn_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that ends an assistant turn in the chat template (Gemma: <end_of_turn>, Llama 3: <|eot_id|>).

    Read off the template by rendering a one-turn conversation; the tokenizer's EOS when the
    template writes no special token right after the answer.
    """
    turn = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _ANSWER}]
    text = tokenizer.apply_chat_template(turn, tokenize=False)
    after = text[text.find(_ANSWER) + len(_ANSWER):] if _ANSWER in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    return ids[0] if ids and ids[0] in special else tokenizer.eos_token_id


def eos_ids(model, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token id that ends an answer (chat models often have several): the generation config's,
    the tokenizer's EOS and the chat template's end of turn."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    for extra in (tokenizer.eos_token_id, turn_end_id(tokenizer)):
        if extra is not None and extra not in ids:
            ids.append(extra)
    return ids



def mask_after_eos(completion_ids: torch.Tensor, eos: list[int]) -> torch.Tensor:
    """1 for tokens up to and including the first end token; all tokens if none ended."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos, device=completion_ids.device))
    ended_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # an end token strictly earlier
    return (~ended_before).long()


def demonstration_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], demonstrations: list[str],
                        device: torch.device) -> Completions:
    """Demonstrations in the rollout layout (the SFT targets): each followed by the template's end of turn."""
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, device)
    end = turn_end_id(tokenizer)
    targets = [tokenizer(d, add_special_tokens=False)["input_ids"] + [end] for d in demonstrations]
    width = max(len(t) for t in targets)
    completion_ids = torch.full((len(targets), width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((len(targets), width), dtype=torch.long)
    for row, ids in enumerate(targets):
        completion_ids[row, : len(ids)] = torch.tensor(ids)
        completion_mask[row, : len(ids)] = 1
    return Completions(prompt_ids, prompt_mask, completion_ids.to(device), completion_mask.to(device))


def completion_logits(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, batch: Completions) -> torch.Tensor:
    """Logits predicting each completion token after the given prompt, (B, C, V).

    Positions come from the attention mask, as in generate, so a left-padded row
    is scored exactly as it was sampled; the LM head runs on the C needed positions only.
    """
    input_ids = torch.cat([prompt_ids, batch.completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, batch.completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    width = batch.completion_ids.shape[1]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=width + 1, use_cache=False)
    return out.logits[:, :-1]


@torch.no_grad()
def mean_logprobs(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list[str], *,
                  with_eos: bool = True, batch_size: int = 8) -> list[float]:
    """Mean per-token log-prob of each answer after its chat-rendered prompt, teacher-forced.

    with_eos counts the end token appended after the answer. Batches of `batch_size`
    keep the (batch, tokens, vocabulary) logits small for long answers.
    """
    device = next(model.parameters()).device
    means: list[float] = []
    with eval_mode(model):
        for start in range(0, len(prompts), batch_size):
            batch = demonstration_batch(tokenizer, prompts[start:start + batch_size], answers[start:start + batch_size],
                                        device)
            logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
            logprobs = F.log_softmax(logits.float(), dim=-1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
            mask = batch.completion_mask.clone()
            if not with_eos:
                mask[torch.arange(len(mask)), mask.sum(-1) - 1] = 0
            mask = mask.float()
            means += ((logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)).tolist()
    return means
