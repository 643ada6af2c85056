import os

import pytest

# Tests never reach a model hub: the embedded model is converted once into this cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
