"""sdft-kit: Self-Distillation Fine-Tuning (SDFT) in four composable steps.

    demo selection -> rollout -> teacher scoring -> update

Core modules import no UI library (gradio, ipywidgets); see docs/architecture.md.
"""

from .batch import Completions
from .chat import chat, generate_text
from .config import PAPER_TEMPLATE, Config, LossConfig, ModelConfig, RolloutConfig, TeacherConfig, TrainConfig
from .data import SAMPLE_DATA, DataError, Example, load_examples
from .demos import DemoSelector, student_prompt, teacher_prompt
from .models import add_lora, load_adapter, load_model
from .records import StepRecord, load_records
# `rollout` (the function) stays in sdft_kit.rollout, so the module name is not shadowed.
from .rollout import make_engine
from .scoring import score_teacher
from .teachers import EMATeacher, make_teacher
from .trainer import Trainer
from .update import demonstration_loss, distill_loss

__version__ = "0.1.0"

__all__ = [
    "PAPER_TEMPLATE", "Config", "LossConfig", "ModelConfig", "RolloutConfig", "TeacherConfig", "TrainConfig",
    "SAMPLE_DATA", "DataError", "Example", "load_examples", "DemoSelector", "student_prompt", "teacher_prompt",
    "add_lora", "load_adapter", "load_model", "Completions", "chat", "generate_text", "make_engine",
    "EMATeacher", "make_teacher", "score_teacher", "StepRecord", "Trainer", "load_records",
    "demonstration_loss", "distill_loss",
]
