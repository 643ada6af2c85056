"""sdft-kit: Self-Distillation Fine-Tuning (SDFT) in four composable steps.

    demo selection -> rollout -> teacher scoring -> update

Core modules import no UI library (gradio, ipywidgets); see docs/architecture.md.

The names below are imported on first use (PEP 562): `import sdft_kit` and the `sdft-kit`
command start without loading torch, transformers and peft, so `sdft-kit --help` and argument
errors come back at once. `from sdft_kit import Trainer` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from . import quiet_imports as _quiet_imports  # noqa: E402 (standard library only: stays light)

_quiet_imports.install()  # bitsandbytes only for 4-bit models, never a Hub lookup (see quiet_imports)

# name -> the module that defines it
_EXPORTS = {
    "Completions": "batch",
    "chat": "generation", "generate_text": "generation",
    "PAPER_TEMPLATE": "config", "Config": "config", "LossConfig": "config", "ModelConfig": "config",
    "RolloutConfig": "config", "TeacherConfig": "config", "TrainConfig": "config",
    "SAMPLE_DATA": "data", "DataError": "data", "Example": "data", "load_examples": "data",
    "DemoSelector": "demos", "student_prompt": "demos", "teacher_prompt": "demos",
    "add_lora": "models", "load_adapter": "models", "load_model": "models",
    "StepRecord": "records", "load_records": "records",
    # `rollout` (the function) stays in sdft_kit.rollout, so the module name is not shadowed.
    "make_engine": "rollout",
    "score_teacher": "scoring",
    "EMATeacher": "teachers", "make_teacher": "teachers",
    "METHODS": "methods", "Method": "methods",
    "PRESETS": "config", "preset": "config",
    "Trainer": "trainer",
    "demonstration_loss": "update", "distill_loss": "update",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sdft_kit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; nothing is imported at run time
    from .batch import Completions
    from .generation import chat, generate_text
    from .config import PAPER_TEMPLATE, Config, LossConfig, ModelConfig, RolloutConfig, TeacherConfig, TrainConfig
    from .data import SAMPLE_DATA, DataError, Example, load_examples
    from .demos import DemoSelector, student_prompt, teacher_prompt
    from .models import add_lora, load_adapter, load_model
    from .records import StepRecord, load_records
    from .rollout import make_engine
    from .scoring import score_teacher
    from .teachers import EMATeacher, make_teacher
    from .methods import METHODS, Method
    from .config import PRESETS, preset
    from .trainer import Trainer
    from .update import demonstration_loss, distill_loss
