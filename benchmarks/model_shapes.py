"""Random-weight models with the shapes of real checkpoints, built locally (nothing is downloaded).

The shapes are copied from the models' public config.json files. Weights are random and the
tokenizer is the embedded model's (SmolLM2's 49,152 tokens, its chat template), or any tokenizer
folder given; the vocabulary of the model keeps its real size (151,936 for Qwen3), so the
embeddings, the LM head and the logits cost what they cost in the real model. Sampled ids past the
tokenizer's vocabulary decode to nothing. Costs (seconds, memory) are the real models'; what they
say is noise.

    from model_shapes import random_model
    model, tokenizer = random_model("Qwen3-1.7B", dtype=torch.bfloat16, device="cuda")
"""

from __future__ import annotations

from pathlib import Path

import torch

_SMOLLM2 = dict(family="llama", vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                rms_norm_eps=1e-5, tie_word_embeddings=True)
_QWEN3 = dict(family="qwen3", vocab_size=151936, head_dim=128, num_key_value_heads=8, max_position_embeddings=40960,
              rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
SHAPES = {
    "SmolLM2-135M": dict(_SMOLLM2, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3),
    "SmolLM2-360M": dict(_SMOLLM2, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5),
    "Qwen3-0.6B": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16),
    "Qwen3-1.7B": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16),
    "Qwen3-4B": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32),
    "Llama-3.2-3B": dict(family="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                         num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
    # for smoke runs: the same code path in seconds
    "tiny": dict(family="llama", vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True),
}


def model_config(name: str, tokenizer):
    """The transformers config of shape `name`, with the tokenizer's special ids."""
    from transformers import LlamaConfig, Qwen3Config

    shape = dict(SHAPES[name])
    family = shape.pop("family")
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return (Qwen3Config if family == "qwen3" else LlamaConfig)(**shape, **ids)


def load_tokenizer(folder: str | Path | None = None):
    """A chat tokenizer: `folder`, else the embedded model's."""
    from transformers import AutoTokenizer

    if folder is None:
        from sdft_kit.models import embedded_model_dir

        folder = embedded_model_dir()
    return AutoTokenizer.from_pretrained(folder)


def random_model(name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0,
                 tokenizer_dir: str | Path | None = None):
    """(model, tokenizer): random weights of shape `name`, made directly on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(name, tokenizer), dtype=dtype)
    model.generation_config.do_sample = False  # the run's own sampling settings apply
    return model.eval(), tokenizer


def save_random_model(name: str, folder: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                      tokenizer_dir: str | Path | None = None) -> Path:
    """Write a random model of shape `name` and its tokenizer to `folder` (for loaders that read a path: 4-bit)."""
    folder = Path(folder)
    model, tokenizer = random_model(name, dtype=dtype, device=device, tokenizer_dir=tokenizer_dir)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder


def parameter_count(name: str) -> int:
    """Parameters of shape `name` (tied embeddings counted once), without building it."""
    s = SHAPES[name]
    heads, kv, hidden = s["num_attention_heads"], s["num_key_value_heads"], s["hidden_size"]
    head_dim = s.get("head_dim", hidden // heads)
    attention = hidden * head_dim * (2 * heads + 2 * kv) + (2 * head_dim if s["family"] == "qwen3" else 0)
    layer = attention + 3 * hidden * s["intermediate_size"] + 2 * hidden
    embeddings = s["vocab_size"] * hidden * (1 if s["tie_word_embeddings"] else 2)
    return s["num_hidden_layers"] * layer + embeddings + hidden
