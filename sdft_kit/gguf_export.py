"""The merged model as a GGUF file (llama.cpp, Ollama, LM Studio), written with the `gguf` package.

    write_gguf(model, tokenizer, path, "q8_0")   one model (a transformers causal LM of a supported family) and
                                                 its tokenizer as GGUF: weights, hyper-parameters, vocabulary,
                                                 merges, special tokens and the chat template
    permute_for_ggml_rope(weight, heads)         Llama q/k rows reordered for ggml's rotary layout (pure)
    quantize_q8_0(weights)                       Q8_0 blocks (gguf.quants: 32 values, one fp16 scale)

Supported families (what the project tests): Llama (SmolLM2, Llama 3), Qwen3 and Gemma 3 (text), with a
byte-level BPE tokenizer. What differs between them is in ARCHITECTURES: the GGUF architecture name,
whether q/k rows are permuted (Llama's rotary layout differs between transformers and ggml), and whether
norm weights are stored plus one (Gemma computes x * (1 + w); ggml multiplies by the stored weight).
Tensor names come from gguf's own map (the one transformers' GGUF loader reads back with).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GGUF_TYPES = ("f16", "q8_0")
Q8_0_BLOCK = 32  # values per Q8_0 block


@dataclass(frozen=True)
class Architecture:
    gguf_name: str  # general.architecture, e.g. "llama"
    permute_qk: bool  # transformers' rotate-half q/k rows -> ggml's interleaved pairs
    norm_plus_one: bool  # norm weights stored as 1 + w (Gemma's RMSNorm scales by 1 + w)


ARCHITECTURES = {  # by transformers' config.model_type
    "llama": Architecture("llama", permute_qk=True, norm_plus_one=False),
    "qwen3": Architecture("qwen3", permute_qk=False, norm_plus_one=False),
    "gemma3_text": Architecture("gemma3", permute_qk=False, norm_plus_one=True),
}

# llama.cpp names its pre-tokenizers (tokenizer.ggml.pre): how text is split before BPE merges. Recognised
# from the tokenizer's own pre_tokenizer; anything else is written as "default", with a warning.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
PRE_TOKENIZERS = {("split", LLAMA3_SPLIT): "llama-bpe", ("split", QWEN2_SPLIT): "qwen2",
                  ("digits+bytelevel", ""): "smollm", ("bytelevel", ""): "gpt-2"}


def permute_for_ggml_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of a Llama q or k projection from transformers' rotary layout (each head's first and
    second halves rotate together) to ggml's (adjacent rows rotate together). rows = heads * head_dim."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def quantize_q8_0(weights: np.ndarray) -> np.ndarray:
    """Q8_0 blocks of a float array whose last dimension is a multiple of 32: per block of 32 values, the scale
    max |x| / 127 stored in fp16 and 32 int8 values x / scale, rounded. Returns the raw bytes, gguf's layout."""
    import gguf

    return gguf.quants.quantize(np.ascontiguousarray(weights, dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)


def write_gguf(model, tokenizer, path: str | Path, gguf_type: str = "q8_0", *, name: str = "",
               pre_tokenizer: str | None = None) -> list[str]:
    """Write `model` (a transformers causal LM) and `tokenizer` to `path` as GGUF in `gguf_type` (f16 or
    q8_0; 1-D tensors stay float32, and a q8_0 matrix whose rows are not a multiple of 32 is written in f16).

    pre_tokenizer: llama.cpp's name for how text is split before BPE (tokenizer.ggml.pre), when known better
    than the tokenizer tells (e.g. kept from the GGUF the base came from). Returns warnings, one line each."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}; got {gguf_type!r}")
    config = model.config
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise ValueError(f"GGUF export supports the model types {', '.join(ARCHITECTURES)}; this model is "
                         f"{config.model_type!r} (export it merged and convert with llama.cpp's converter)")
    notes: list[str] = []
    writer = gguf.GGUFWriter(str(path), arch.gguf_name)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if gguf_type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    _add_hyperparameters(writer, config, arch, notes)
    writer.add_name(name or Path(str(config.name_or_path)).name or config.model_type)
    writer.add_file_type(file_type)
    if gguf_type == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    notes += _add_vocabulary(writer, tokenizer, vocab_rows, pre_tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_name.upper()], config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent (and transformers then ties)
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ValueError(f"no GGUF name for the tensor {hf_name!r} of this {config.model_type} model")
        data = tensor.detach().float().cpu().numpy()
        if arch.permute_qk and gguf_name.endswith((".attn_q", ".attn_k")):
            heads = config.num_attention_heads if gguf_name.endswith(".attn_q") else config.num_key_value_heads
            data = permute_for_ggml_rope(data, heads)
        if arch.norm_plus_one and gguf_name.endswith("norm"):
            data = data + 1.0
        array, raw_dtype = _encode(data, gguf_type)
        writer.add_tensor(f"{gguf_name}.{suffix}", array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return notes


def _encode(data: np.ndarray, gguf_type: str) -> tuple:
    """(array, raw_dtype) for GGUFWriter.add_tensor: float32 for vectors, else f16 or Q8_0 blocks."""
    import gguf

    if data.ndim == 1:
        return np.ascontiguousarray(data, dtype=np.float32), None
    if gguf_type == "q8_0" and data.shape[-1] % Q8_0_BLOCK == 0:
        return quantize_q8_0(data), gguf.GGMLQuantizationType.Q8_0
    return np.ascontiguousarray(data, dtype=np.float16), None


def _rope_thetas(config) -> tuple[float, float | None]:
    """(rope theta of full attention, of sliding-window attention or None), from transformers 5's
    rope_parameters (one dict, or one per layer type) or the older rope_theta."""
    params = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in params:
        return float(params["full_attention"]["rope_theta"]), float(params["sliding_attention"]["rope_theta"])
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0)), None


def _rope_scaling(config) -> dict | None:
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get("full_attention", params)
    return None if params.get("rope_type", "default") == "default" else params


def _add_hyperparameters(writer, config, arch: Architecture, notes: list[str]) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    full_theta, sliding_theta = _rope_thetas(config)
    writer.add_rope_freq_base(full_theta)
    scaling = _rope_scaling(config)
    if scaling is not None:
        if scaling.get("rope_type") != "linear":
            raise ValueError(f"GGUF export does not write rope scaling of type {scaling.get('rope_type')!r} yet "
                             "(linear only); convert the merged export with llama.cpp's converter")
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if arch.gguf_name == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)
    if arch.gguf_name == "gemma3":
        writer.add_sliding_window(config.sliding_window)
        if sliding_theta is not None:
            writer.add_rope_freq_base_swa(sliding_theta)
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(config.final_logit_softcapping)
        if config.query_pre_attn_scalar != head_dim:
            notes.append(f"query_pre_attn_scalar is {config.query_pre_attn_scalar}, head_dim {head_dim}: llama.cpp "
                         "scales Gemma 3 attention by head_dim (as the released Gemma 3 models have it), so its "
                         "answers will differ from transformers' for this model")


def _pre_tokenizer_name(spec: dict | None) -> str | None:
    """llama.cpp's pre-tokenizer name for a tokenizer.json pre_tokenizer, or None if not recognised."""
    if not spec:
        return None
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return PRE_TOKENIZERS[("bytelevel", "")]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return PRE_TOKENIZERS[("digits+bytelevel", "")]
    if kinds == ["Split", "ByteLevel"]:
        return PRE_TOKENIZERS.get(("split", parts[0].get("pattern", {}).get("Regex", "")))
    return None


def _add_vocabulary(writer, tokenizer, vocab_rows: int, pre_tokenizer: str | None) -> list[str]:
    """Tokens (byte-level strings, by id; padded to the embedding's rows), their types, merges, special ids,
    whether a BOS is added, and the chat template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("GGUF export supports byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen); this one is "
                         f"{model.get('type')} with byte fallback {bool(model.get('byte_fallback'))} (SentencePiece "
                         "style, e.g. the released Gemma 3): convert the merged export with llama.cpp's converter")
    notes = []
    pre = pre_tokenizer or _pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        pre = "default"
        notes.append("the tokenizer's pre-tokenizer is not one llama.cpp is known to name here; wrote 'default' "
                     "(llama.cpp may split text differently from transformers)")
    size = len(tokenizer)
    if size > vocab_rows:
        raise ValueError(f"the tokenizer has {size} tokens but the model's embedding only {vocab_rows} rows")
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    types = [gguf.TokenType.NORMAL] * size
    for token_id, token in added.items():
        types[token_id] = gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED
    padding = vocab_rows - size  # embedding rows past the tokenizer (rounded-up vocabularies, e.g. Qwen)
    tokens += [f"[PAD{i}]" for i in range(size, vocab_rows)]
    types += [gguf.TokenType.UNUSED] * padding
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])])
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    return notes


def check_q8_0_error(weights: np.ndarray) -> float:
    """Largest |x - dequantize(quantize(x))| over the array, for tests and reports."""
    import gguf

    restored = gguf.quants.dequantize(quantize_q8_0(weights), gguf.GGMLQuantizationType.Q8_0)
    return float(np.abs(restored.reshape(weights.shape) - weights).max())


# -- a run's merged model as GGUF, and the check that it loads back --------------------------------------
VERIFY_PROMPTS = ("What is the capital of France?", "Write one sentence about the sea.", "What is 12 times 7?")


@dataclass
class GGUFExport:
    folder: Path
    files: list[Path]  # model-<type>.gguf, in the order asked
    notes: list[str]  # what the files could not carry, one line each
    gaps: dict[str, float]  # per type, with verify: the largest next-token log-prob difference to the merged model
    config_source: dict[str, str]  # per type, with verify: "file" or "original" (see load_gguf_back)


def export_gguf(run_dir: str | Path, out_dir: str | Path, gguf_types: tuple[str, ...] = ("q8_0",),
                verify: bool = False) -> GGUFExport:
    """The run's base + adapter merged (in float32) and written as model-<type>.gguf for each type, with an
    Ollama Modelfile (FROM the last type). out_dir must be new or empty. verify: load each file back with
    transformers' GGUF loader and measure its next-token log-probs against the merged model (logprob_gap)."""
    from .config import Config
    from .export import _new_folder, adapter_dir, base_model_name
    from .modelfile import modelfile
    from .models import EMBEDDED, load_adapter

    gguf_types = tuple(dict.fromkeys(gguf_types))
    unknown = [t for t in gguf_types if t not in GGUF_TYPES]
    if unknown or not gguf_types:
        raise ValueError(f"GGUF types are {', '.join(GGUF_TYPES)}; got {', '.join(gguf_types) or 'none'}")
    run_dir = Path(run_dir)
    config = Config.load(run_dir / "config.yaml").replace(load_in_4bit=False, dtype="float32", device="cpu")
    source = adapter_dir(run_dir)
    out = _new_folder(out_dir)
    model, tokenizer = load_adapter(source, config.model)
    merged = model.merge_and_unload().eval()
    # The embedded base came from a GGUF written by llama.cpp: keep its pre-tokenizer name ("smollm").
    pre = embedded_pre_tokenizer() if config.model.model == EMBEDDED else None
    name = f"{base_model_name(config).rsplit('/', 1)[-1]} ({run_dir.name}, sdft-kit)"
    result = GGUFExport(out, [], [], {}, {})
    for gguf_type in gguf_types:
        path = out / f"model-{gguf_type}.gguf"
        result.notes += write_gguf(merged, tokenizer, path, gguf_type, name=name, pre_tokenizer=pre)
        result.files.append(path)
        if verify:
            restored, result.config_source[gguf_type] = load_gguf_back(path, merged.config)
            result.gaps[gguf_type] = logprob_gap(merged, restored, tokenizer)
            del restored
    text, more = modelfile(tokenizer, result.files[-1].name)
    (out / "Modelfile").write_text(text, encoding="utf-8")
    result.notes = list(dict.fromkeys(result.notes + more))
    return result


def embedded_pre_tokenizer() -> str | None:
    """tokenizer.ggml.pre of the embedded model's own GGUF file (written by llama.cpp)."""
    from gguf import GGUFReader

    from .models import embedded_gguf_path

    field = GGUFReader(embedded_gguf_path()).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def load_gguf_back(path: str | Path, fallback_config=None):
    """The GGUF file loaded with transformers' GGUF loader (dequantized to float32), and where its config came
    from: "file", or "original" when transformers cannot build the model from the file's metadata alone (its
    loader does not read Qwen3's head size, attention.key_length) and `fallback_config` is given."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import no_loading_bar

    from transformers.utils import logging as transformers_logging

    path = Path(path)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the failed first try's load report is not news
    try:
        with no_loading_bar(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
                # Some transformers releases build Qwen3 from the file with the default head size (128), not the
                # file's attention.key_length: it loads, with the wrong shapes. The original config then.
                if fallback_config is None or _same_shapes(model.config, fallback_config):
                    return model, "file"
            except RuntimeError:
                if fallback_config is None:
                    raise
            return (AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=fallback_config,
                                                         dtype=torch.float32), "original")
    finally:
        transformers_logging.set_verbosity(verbosity)


SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim")


def _same_shapes(config, reference) -> bool:
    """Whether two model configs agree on every field that sets a weight's or an activation's shape."""
    return all(getattr(config, name, None) == getattr(reference, name, None) for name in SHAPE_FIELDS)


def logprob_gap(reference, restored, tokenizer, prompts: tuple[str, ...] = VERIFY_PROMPTS) -> float:
    """Largest |log p_reference - log p_restored| over the whole vocabulary, at every position of each prompt
    (chat-rendered): how far the file's next-token distributions are from the model's."""
    import torch

    gap = 0.0
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            expected = torch.log_softmax(reference(ids).logits.float(), dim=-1)
            got = torch.log_softmax(restored(ids).logits.float(), dim=-1)
        gap = max(gap, float((expected - got).abs().max()))
    return gap
