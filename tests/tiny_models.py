"""Tiny random-weight chat models of other families, built locally (no download) for the tests.

`build_tiny_model(family, folder)` writes a folder that `load_model` reads like any Hub model:
a 2-layer, hidden-64 model of the family's architecture, and a tokenizer that keeps the
embedded model's vocabulary but carries the family's conventions: its real chat template
(the copies TRL ships as package data, `trl/chat_templates/*.jinja`), special tokens, BOS
behaviour, end tokens and a generation_config like the real checkpoints' (which sample by default).

    llama3  Meta-Llama-3-Instruct: <|begin_of_text|> from the template, turns end with <|eot_id|>, no pad token
    qwen3   Qwen3: no BOS, <|im_end|>, the enable_thinking switch (<think> blocks), vocab padded past the tokenizer
    gemma3  gemma-3-it: no system role (folded into the first user turn), eos <eos> but turns end with <end_of_turn>
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch

FAMILIES = {
    "llama3": dict(
        template="llama3.jinja",
        special=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        plain=[], bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, bos_from_tokenizer=True,
        generation_eos=["<|end_of_text|>", "<|eot_id|>"], pad_vocab_to=None,
        sampling=dict(do_sample=True, temperature=0.6, top_p=0.9),
    ),
    "qwen3": dict(
        template="qwen3.jinja",
        special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        plain=["<think>", "</think>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>", bos_from_tokenizer=False,
        generation_eos=["<|im_end|>", "<|endoftext|>"], pad_vocab_to=128,
        sampling=dict(do_sample=True, temperature=0.6, top_p=0.95, top_k=20),
    ),
    "gemma3": dict(
        template="gemma3.jinja",
        special=["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        plain=[], bos="<bos>", eos="<eos>", pad="<pad>", bos_from_tokenizer=True,
        generation_eos=["<eos>", "<end_of_turn>"], pad_vocab_to=None,
        sampling=dict(do_sample=True, top_k=64, top_p=0.95),
    ),
}


def _config(family: str, vocab: int):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen3Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                  tie_word_embeddings=True)
    if family == "gemma3":
        return Gemma3TextConfig(**common, sliding_window=64)
    return (LlamaConfig if family == "llama3" else Qwen3Config)(**common)


def build_tiny_model(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `family` chat model (weights, tokenizer, generation_config) to `folder`."""
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from sdft_kit.models import embedded_model_dir

    spec, folder = FAMILIES[family], Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    vocab = len(tokenizer)
    tokenizer.add_special_tokens({"extra_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                           for t in spec["special"]]},
                                 replace_extra_special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["plain"]])
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = spec["bos"], spec["eos"], spec["pad"]
    if spec["bos_from_tokenizer"]:  # like the real tokenizers: tokenizer("x") starts with BOS
        bos_id = tokenizer.convert_tokens_to_ids(spec["bos"])
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B", special_tokens=[(spec["bos"], bos_id)])
    tokenizer.chat_template = (files("trl") / "chat_templates" / spec["template"]).read_text()
    ids = {name: tokenizer.convert_tokens_to_ids(spec[key]) if spec[key] else None
           for name, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "pad"))}
    torch.manual_seed(seed)
    # Build at the old vocabulary with no special ids, grow the embeddings, then set the ids
    # (Gemma 3 asserts its padding index is inside the embedding).
    model = AutoModelForCausalLM.from_config(_config(family, vocab), dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=spec["pad_vocab_to"], mean_resizing=False)
    for name, value in ids.items():
        setattr(model.config, name, value)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"],
        eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in spec["generation_eos"]], **spec["sampling"])
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_lora_run(base: str, folder: str | Path, std: float = 0.02, lora_r: int = 8) -> Path:
    """A run directory as training leaves it (config.yaml, adapter/ with its tokenizer) whose LoRA adapter
    really changes the model: B ~ N(0, std), seed 0 (a fresh adapter's B is zero)."""
    from sdft_kit.config import Config
    from sdft_kit.models import add_lora, load_model

    folder = Path(folder)
    config = Config().replace(model=str(base), lora_r=lora_r, load_in_4bit=False)
    model, tokenizer = load_model(config.model.model, config.model)
    model = add_lora(model, config.model, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    config.save(folder / "config.yaml")
    return folder
