"""bitsandbytes imported only for 4-bit models, and then without the network and without noise.

bitsandbytes (>= 0.49) asks the Hugging Face Hub for a CPU kernel when it is imported, through the
`kernels` package (which transformers >= 5.2x installs): offline that prints two warnings
("Failed to load CPU gemm_4bit_forward from kernels-community ..."), and with no network and
HF_HUB_OFFLINE unset it waits on the Hub's timeouts. sdft-kit downloads no code at run time and never
runs that kernel (it serves a repacked weight layout that models.keep_one_4bit_layout turns off), so
bitsandbytes is imported with `kernels` blocked, its logger at ERROR meanwhile: it takes its own kernels.

peft imports bitsandbytes whenever it is installed, at `import peft` and each time it wraps a model.
A 16- or 32-bit model does not need it (importing it takes seconds): while bitsandbytes is not imported,
peft is imported as if it were not installed, and peft's cached answer is dropped once bitsandbytes is
imported (by a 4-bit load, or anyone), so a 4-bit model later in the same process gets its 4-bit layers.

`install()` (run by `import sdft_kit`) adds one import hook that acts on these two names only.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import sys
from collections.abc import Iterator

_ABSENT = object()


@contextlib.contextmanager
def _bitsandbytes_without_hub_kernels() -> Iterator[None]:
    kernels = sys.modules.get("kernels", _ABSENT)
    sys.modules["kernels"] = None  # `from kernels import get_kernel` fails at once, before any Hub request
    logger = logging.getLogger("bitsandbytes")  # its modules' loggers inherit this level
    level = logger.level
    logger.setLevel(logging.ERROR)  # its warning that the Hub kernel could not be loaded
    try:
        yield
    finally:
        logger.setLevel(level)
        if sys.modules.get("kernels", _ABSENT) is None:
            if kernels is _ABSENT:
                del sys.modules["kernels"]
            else:
                sys.modules["kernels"] = kernels
    _forget_answers(("peft.import_utils", "is_bnb_available"), ("peft.import_utils", "is_bnb_4bit_available"))
    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", _ABSENT) is None:
        helpers.bnb = sys.modules.get("bitsandbytes")  # bound at `import peft`, while it was hidden


@contextlib.contextmanager
def _peft_without_bitsandbytes() -> Iterator[None]:
    if "bitsandbytes" in sys.modules:  # imported already (a 4-bit model): nothing to hide
        yield
        return
    sys.modules["bitsandbytes"] = None  # `import bitsandbytes` fails and find_spec says it is not installed
    try:
        yield
        # peft caches its answer: ask now, while hidden, so wrapping a model does not import it either
        for name in ("is_bnb_available", "is_bnb_4bit_available"):
            check = getattr(sys.modules.get("peft.import_utils"), name, None)
            if check is not None:
                check()
    finally:
        if "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None:
            del sys.modules["bitsandbytes"]
        # peft imports parts of transformers, whose own cached answer must not keep "not installed"
        _forget_answers(("transformers.utils.import_utils", "is_bitsandbytes_available"))


def _forget_answers(*functions: tuple[str, str]) -> None:
    """Drop the cached result of each (module, function) that is imported and cached (functools.lru_cache)."""
    for module_name, name in functions:
        clear = getattr(getattr(sys.modules.get(module_name), name, None), "cache_clear", None)
        if clear is not None:
            clear()


_ACTIONS = {"bitsandbytes": _bitsandbytes_without_hub_kernels, "peft": _peft_without_bitsandbytes}


class _Hook(importlib.abc.MetaPathFinder):
    """Finds these modules as usual (through the other finders) and runs their import inside their action."""

    def find_spec(self, fullname, path, target=None):
        action = _ACTIONS.get(fullname)
        if action is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_inside_action(module) -> None:
            with action():
                exec_module(module)

        spec.loader.exec_module = exec_inside_action  # this loader object serves this one import
        return spec


def install() -> None:
    """Add the hook once, ahead of the other finders. Modules imported already are left as they are."""
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
