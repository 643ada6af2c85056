"""Tests for sdft_kit.gguf_export: the rotary permutation and Q8_0 blocks against hand-computed values, and each
tested family (tiny Llama, Qwen3, Gemma 3) written as f16 and q8_0, loaded back with transformers' GGUF loader
and compared with the model on next-token log-probs; the vocabulary against llama.cpp's own SmolLM2 file."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdft_kit import gguf_export
from sdft_kit.gguf_export import (ARCHITECTURES, LLAMA3_SPLIT, QWEN2_SPLIT, check_q8_0_error, load_gguf_back,
                                  logprob_gap, permute_for_ggml_rope, quantize_q8_0, write_gguf)

# Largest next-token log-prob difference allowed after a round trip: f16 rounds each weight to ~3 significant
# digits, q8_0 to 1/254 of its block's largest value (measured: ~3e-4 and ~1e-2 on these tiny models).
BOUNDS = {"f16": 5e-3, "q8_0": 0.1}


def test_permute_for_ggml_rope_pairs_each_half_with_its_partner():
    heads, head_dim, columns = 2, 6, 3
    weight = np.arange(heads * head_dim * columns, dtype=np.float32).reshape(heads * head_dim, columns)
    permuted = permute_for_ggml_rope(weight, heads)
    half = head_dim // 2
    for head in range(heads):
        for i in range(half):  # ggml rotates rows 2i and 2i+1 together; transformers rows i and i + half
            assert (permuted[head * head_dim + 2 * i] == weight[head * head_dim + i]).all()
            assert (permuted[head * head_dim + 2 * i + 1] == weight[head * head_dim + half + i]).all()
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    restored = LlamaTensorProcessor()._reverse_permute_weights(permuted, heads, heads)  # what the loader undoes
    assert (restored == weight).all()


def test_q8_0_blocks_hold_an_fp16_scale_and_32_rounded_int8_values():
    values = np.linspace(-1.0, 0.5, 64, dtype=np.float32).reshape(1, 64)
    blocks = quantize_q8_0(values)
    assert blocks.dtype == np.uint8 and blocks.shape == (1, 2 * 34)  # 2 blocks of 2 + 32 bytes
    first = blocks[0, :34]
    scale = first[:2].view(np.float16)[0]
    assert scale == np.float16(1.0 / 127)  # max |x| of the first block / 127, stored in fp16
    expected = np.round(values[0, :32] * 127).astype(np.int8)  # x / (max / 127), max = 1 here
    assert (first[2:].view(np.int8) == expected).all() and expected[0] == -127
    assert check_q8_0_error(values) <= 1 / 254 + 127 * abs(float(scale) - 1 / 127)


def tensor_errors(model, restored) -> dict[str, float]:
    """Per tensor: largest |restored - original| as a share of the tensor's largest |value|."""
    original, loaded = model.state_dict(), restored.state_dict()
    return {name: float((loaded[name] - w).abs().max() / w.abs().max().clamp_min(1e-12)) for name, w in original.items()}


# f16 keeps 11 significant bits. q8_0 rounds to half a step of max/127 in each block, and the step itself is
# stored in fp16: up to 127 steps of its rounding (2^-11 relative) come on top (1/254 + 2^-11 of the max).
TENSOR_BOUNDS = {"f16": 2.0**-11, "q8_0": 1 / 254 + 2.0**-11}


@pytest.mark.parametrize("family, types", [("llama3", ("f16", "q8_0")), ("qwen3", ("q8_0",)), ("gemma3", ("q8_0",))])
def test_round_trip_per_family(tiny_model_dir, tmp_path, family, types):
    """Each tensor comes back within its type's rounding (so names, layouts, the Llama q/k permutation and
    Gemma's norm offset are right), and the next-token log-probs stay close. (Every family in both types, and
    the embedded SmolLM2: benchmarks/gguf_roundtrip.py.)"""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    gaps = {}
    for gguf_type in types:
        path = tmp_path / f"{family}-{gguf_type}.gguf"
        write_gguf(model, tokenizer, path, gguf_type)
        restored, source = load_gguf_back(path, model.config)
        worst = max(tensor_errors(model, restored).items(), key=lambda item: item[1])
        assert worst[1] <= TENSOR_BOUNDS[gguf_type], (gguf_type, worst)
        gaps[gguf_type] = logprob_gap(model, restored, tokenizer)
        assert 0 < gaps[gguf_type] < BOUNDS[gguf_type], (family, gguf_type, gaps)
        # transformers builds Llama and Gemma 3 from the file's own metadata; Qwen3 needs the original config
        # (its GGUF loader does not read attention.key_length), so the metadata is checked here instead.
        assert source == ("original" if family == "qwen3" else "file")
    if family == "llama3":  # the check can fail: without the q/k permutation, q and k come back scrambled
        original = ARCHITECTURES["llama"]
        try:
            ARCHITECTURES["llama"] = gguf_export.Architecture("llama", False, False)
            write_gguf(model, tokenizer, tmp_path / "wrong.gguf", "f16")
        finally:
            ARCHITECTURES["llama"] = original
        wrong, _ = load_gguf_back(tmp_path / "wrong.gguf")
        errors = tensor_errors(model, wrong)
        assert errors["model.layers.0.self_attn.q_proj.weight"] > 0.1 and errors["model.embed_tokens.weight"] < 1e-3
        assert logprob_gap(model, wrong, tokenizer) > 10 * gaps["f16"]
    if source == "file":
        return  # built from the file's own metadata: a wrong hyper-parameter would have failed above
    fields = GGUFReader(path).fields
    arch = ARCHITECTURES[model.config.model_type].gguf_name
    value = {name: fields[name].contents() for name in fields if not name.startswith("tokenizer.ggml.")}
    assert value["general.architecture"] == arch and value["general.file_type"] == (1 if gguf_type == "f16" else 7)
    assert value[f"{arch}.attention.key_length"] == model.config.head_dim
    assert value[f"{arch}.attention.head_count_kv"] == model.config.num_key_value_heads
    assert value[f"{arch}.block_count"] == model.config.num_hidden_layers
    assert len(fields["tokenizer.ggml.tokens"].data) == model.get_input_embeddings().weight.shape[0]  # padded
    assert value["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.eos_token_id


def test_the_vocabulary_matches_llama_cpps_own_smollm2_file(tmp_path):
    """The embedded model's GGUF was written by llama.cpp: ours carries the same tokens, types, merges and ids."""
    from gguf import GGUFReader, GGUFWriter
    from transformers import AutoTokenizer

    from sdft_kit.models import embedded_gguf_path, embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    writer = GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    notes = gguf_export._add_vocabulary(writer, tokenizer, len(tokenizer), gguf_export.embedded_pre_tokenizer())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    ours, theirs = GGUFReader(tmp_path / "vocab.gguf").fields, GGUFReader(embedded_gguf_path()).fields
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template"):
        assert ours[key].contents() == theirs[key].contents(), key
    assert notes == []


def test_pre_tokenizer_names():
    def split(regex):
        return {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": regex}},
                                                      {"type": "ByteLevel", "use_regex": False}]}

    assert gguf_export._pre_tokenizer_name(split(LLAMA3_SPLIT)) == "llama-bpe"
    assert gguf_export._pre_tokenizer_name(split(QWEN2_SPLIT)) == "qwen2"
    assert gguf_export._pre_tokenizer_name({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]}) == "smollm"
    assert gguf_export._pre_tokenizer_name({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    assert gguf_export._pre_tokenizer_name(split(r"\s+")) is None


def test_unsupported_models_get_one_clear_line(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    with pytest.raises(ValueError, match="supports the model types llama, qwen3, gemma3_text; this model is 'gpt2'"):
        write_gguf(model, AutoTokenizer.from_pretrained(tiny_model_dir("llama3")), tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="GGUF type must be one of f16, q8_0"):
        write_gguf(model, None, tmp_path / "x.gguf", "q4_0")


def test_export_command_writes_gguf_and_modelfile_and_verifies_them(tiny_model_dir, tmp_path):
    """`sdft-kit export --format gguf` on a run of a tiny Llama with a LoRA adapter that changes the model."""
    from tiny_models import write_lora_run

    run = write_lora_run(tiny_model_dir("llama3"), tmp_path / "run", std=0.05, lora_r=4)
    out = tmp_path / "gguf"
    result = subprocess.run([sys.executable, "-m", "sdft_kit.cli", "export", "--run", str(run), "--out", str(out),
                             "--format", "gguf", "--quant", "q8_0", "--verify"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model-q8_0.gguf"]
    [verified] = [line for line in result.stdout.splitlines() if line.startswith("verified ")]
    assert verified.startswith("verified model-q8_0.gguf") and 0 < float(verified.split()[-1]) < BOUNDS["q8_0"]
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q8_0.gguf\nTEMPLATE") and 'PARAMETER stop "<|eot_id|>"' in modelfile
    again = subprocess.run([sys.executable, "-m", "sdft_kit.cli", "export", "--run", str(run), "--out", str(out),
                            "--format", "gguf"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "not empty" in again.stderr  # nothing overwritten
