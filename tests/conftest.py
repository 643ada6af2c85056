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
