import atexit
import os
import shutil
import tempfile

import pytest

# Tests never reach a model hub: the embedded model is converted once into this cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# report_to 'auto' logs to trackio when it is installed: into a temporary folder, never a Space or server.
if "TRACKIO_DIR" not in os.environ:
    os.environ["TRACKIO_DIR"] = tempfile.mkdtemp(prefix="sdft-kit-tests-trackio-")
    atexit.register(shutil.rmtree, os.environ["TRACKIO_DIR"], True)
for remote in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL"):
    os.environ.pop(remote, None)
# rollout.engine 'auto' would start a vLLM engine (~15 s, ~0.7 GB) in every SDFT test where vLLM is
# installed (CI installs it): the suite runs the hf engine unless a test names 'vllm' (or tests 'auto').
os.environ["SDFT_KIT_AUTO_ENGINE"] = "hf"


@pytest.fixture
def model_and_tokenizer():
    """A fresh embedded base model (no adapter); loads in well under 2 s from the cache."""
    from sdft_kit import load_model

    return load_model("embedded")


@pytest.fixture
def lora_model(model_and_tokenizer):
    from sdft_kit import add_lora

    model, tokenizer = model_and_tokenizer
    return add_lora(model, seed=0), tokenizer


@pytest.fixture
def demo_examples():
    from sdft_kit import load_examples
    from sdft_kit import SAMPLE_DATA

    return load_examples(SAMPLE_DATA)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """build(family) -> a folder holding a tiny random model of that family (built once per session)."""
    from tiny_models import build_tiny_model

    built = {}

    def build(family: str):
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(family))
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (2 layers, width 32, a 512-token context) with the embedded model's tokenizer.

    It loads and steps in a blink: for tests of the run machinery (checkpoints, locks, errors), not of learning.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sdft_kit.models import embedded_model_dir

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def one_thread():
    """One torch thread for the test: decoding a small model on a shared 2-core CPU is several times faster so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def static_images():
    """Needs kaleido and a Chrome/Chromium for the figures' static PNGs: skipped where they are missing,
    a failure where SDFT_KIT_REQUIRE_STATIC_FIGURES is set (CI installs Debian's chromium)."""
    from sdft_kit.figure_output import renderer

    reason = renderer.unavailable()
    if reason and os.environ.get("SDFT_KIT_REQUIRE_STATIC_FIGURES"):
        pytest.fail(f"SDFT_KIT_REQUIRE_STATIC_FIGURES is set but static PNGs cannot be made: {reason}")
    if reason:
        pytest.skip(f"no static PNGs here: {reason}")
