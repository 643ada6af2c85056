"""Step 2, rollout: the student samples its own answers to the queries.

Sampling is done by an engine, picked by `rollout.engine`:
    hf    transformers' `generate` on the student's own weights (LoRA merged while decoding);
    vllm  a vLLM engine in the training process, synced with the student after every step
          (faster decoding; its own copy of the weights; see vllm_engine.py);
    auto  (the default) vllm where it can run, else hf: `resolve_engine` says which and why.
An engine has a `name` and two methods: `sample(prompts, do_sample=True) -> Completions` and
`after_step()`, called after every optimizer step (where an engine holding its own copy
of the weights would sync them). Engines that sample from other weights than the
student's record each sampled token's log-prob (`Completions.sampler_logprobs`) so the
loss can correct for the mismatch. Adding an engine: a class with the two methods of
`RolloutEngine` here (or in its own module), its name in config.Engine, a branch in `make_engine`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
from collections.abc import Callable
from typing import Protocol

import torch
from transformers import LogitsProcessorList, PreTrainedTokenizerBase

from .batch import Completions, eos_ids, mask_after_eos, tokenize_prompts
from .config import ENGINES, RolloutConfig
from .distributed import world_size
from .models import eval_mode, is_quantized


class RolloutEngine(Protocol):
    name: str  # what config.rollout.engine names it

    def sample(self, prompts: list[str], *, do_sample: bool = True) -> Completions: ...

    def after_step(self) -> None: ...


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


class SampledLogprobs:
    """A logits processor that records the log-probability the student gave each token it sampled, at the sampling
    temperature (before top-p, as the loss computes the student's): what reused rollouts are importance-weighted
    by once the student has moved. transformers runs the caller's processors before its temperature and top-p
    warpers, so `scores` here are the model's logits."""

    def __init__(self, temperature: float):
        self.temperature, self.previous, self.columns = temperature, None, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._gather(input_ids)
        self.previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _gather(self, sequences: torch.Tensor) -> None:
        if self.previous is not None:  # the token sampled from the previous call's distribution
            self.columns.append(self.previous.gather(-1, sequences[:, -1:]))

    def logprobs(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, C): one log-prob per generated token of `sequences` (the last one gathered here)."""
        self._gather(sequences)
        return torch.cat(self.columns, dim=1)


class HFEngine:
    """transformers' `generate` on the student's current weights: nothing to sync after a step."""

    name = "hf"

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, config: RolloutConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config

    @torch.no_grad()
    def sample(self, prompts: list[str], *, do_sample: bool = True) -> Completions:
        """`generations_per_prompt` completions per chat-rendered prompt, grouped by prompt (row i: prompt i // n)."""
        model, tokenizer, config = self.model, self.tokenizer, self.config
        device = next(model.parameters()).device
        prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, device)
        n = config.generations_per_prompt
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
        sampling = {"temperature": config.temperature, "top_p": config.top_p, "top_k": 0} if do_sample else {}
        # Rollouts reused over several steps need the sampler's log-probs; on-policy ones do not.
        recorder = SampledLogprobs(config.temperature) if do_sample and config.steps_per_generation > 1 else None
        if recorder is not None:
            sampling["logits_processor"] = LogitsProcessorList([recorder])
        eos = eos_ids(model, tokenizer)
        with eval_mode(model), merged_lora(model):
            sequences = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                max_new_tokens=config.max_new_tokens,
                do_sample=do_sample,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        completion_ids = sequences[:, prompt_ids.shape[1]:]
        completion_mask = mask_after_eos(completion_ids, eos)
        # Padding after the end token is whatever generate wrote; make it the pad id for readability.
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
        sampler = None if recorder is None else recorder.logprobs(sequences).masked_fill(completion_mask == 0, 0.0)
        return Completions(prompt_ids, prompt_mask, completion_ids, completion_mask, sampler,
                           temperature=config.temperature if do_sample else 1.0)

    def after_step(self) -> None:
        pass


def resolve_engine(config: RolloutConfig, model, *, processes: int = 1) -> tuple[str, str]:
    """The engine `config.engine` stands for in this run, and why: 'auto' is vllm where it can run, else hf.

    vLLM samples 1.5-2.5x faster than `generate` on a CPU and starts in ~15 s, which a run
    earns back within its first few steps (docs/performance.md); it runs in one process only,
    and over a 4-bit base it would hold a full-precision copy, defeating QLoRA's memory saving.
    """
    if config.engine != "auto":
        return config.engine, "set in the config"
    if os.environ.get("SDFT_KIT_AUTO_ENGINE") == "hf":
        return "hf", "SDFT_KIT_AUTO_ENGINE=hf"
    if processes > 1:
        return "hf", f"{processes} processes (the vllm engine runs in one)"
    if model is not None and is_quantized(model):
        return "hf", "a 4-bit base (vLLM would hold a full-precision copy)"
    if importlib.util.find_spec("vllm") is None:
        return "hf", "vLLM is not installed"
    return "vllm", "vLLM is installed"


def _vllm_engine(model, tokenizer, config: RolloutConfig, **sizes) -> RolloutEngine:
    if world_size() > 1:
        raise ValueError("rollout.engine 'vllm' runs in a single process for now; use --engine hf with several "
                         "processes")
    from .vllm_engine import VLLMEngine

    return VLLMEngine(model, tokenizer, config, **sizes)


# The engines: each name's builder, `build(model, tokenizer, rollout_config, sequences=, longest_prompt=)`. A new
# engine is one register_engine call (here, or in your own code); its name then becomes a valid `engine` setting
# ('auto' still picks between hf and vllm, see resolve_engine).
ENGINE_BUILDERS: dict[str, Callable[..., RolloutEngine]] = {}


def register_engine(name: str, build: Callable[..., RolloutEngine]) -> None:
    """Add a rollout engine: `build(model, tokenizer, config, sequences=..., longest_prompt=...)` returns an object
    with the RolloutEngine protocol (and config.ENGINES names it)."""
    ENGINE_BUILDERS[name] = build
    if name not in ENGINES:
        ENGINES.append(name)


register_engine("hf", lambda model, tokenizer, config, **sizes: HFEngine(model, tokenizer, config))
register_engine("vllm", _vllm_engine)


def make_engine(model, tokenizer: PreTrainedTokenizerBase, config: RolloutConfig | None = None, *,
                sequences: int | None = None, longest_prompt: int | None = None) -> RolloutEngine:
    """The rollout engine of `config.engine` (one of config.ENGINES) over the student `model`.

    `sequences` (prompts per rollout) and `longest_prompt` (tokens of the longest student
    prompt the run will sample from) let the vllm engine size its KV cache to the run.
    """
    config = config or RolloutConfig()
    if config.engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {config.engine!r}")
    engine, reason = resolve_engine(config, model, processes=world_size())
    if config.engine == "auto":
        print(f"sdft-kit: rollout engine 'auto' -> {engine} ({reason})", flush=True)
    return ENGINE_BUILDERS[engine](model, tokenizer, config, sequences=sequences, longest_prompt=longest_prompt)


def rollout(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: RolloutConfig | None = None,
            *, do_sample: bool = True) -> Completions:
    """Sample `generations_per_prompt` completions per prompt from the current student, with `config.engine`.

    Returned rows are grouped by prompt: row i belongs to prompt i // generations. A
    training loop keeps one engine (`make_engine`) instead; this builds one per call, so
    'auto' is hf here (a vLLM engine would take longer to start than one call saves).
    """
    config = config or RolloutConfig()
    if config.engine == "auto":
        config = dataclasses.replace(config, engine="hf")
    return make_engine(model, tokenizer, config).sample(prompts, do_sample=do_sample)
