"""sdft-kit: Self-Distillation Fine-Tuning (SDFT) in four composable steps.

    demo selection -> rollout -> teacher scoring -> update

Core modules import no UI library (gradio, ipywidgets); see README.md.
"""

from .config import PAPER_TEMPLATE, Config, LossConfig, ModelConfig, RolloutConfig, TeacherConfig, TrainConfig
from .data import SAMPLE_DATA, DataError, Example, load_examples
from .demos import DemoSelector, student_prompt, teacher_prompt
from .models import add_lora, load_adapter, load_model
# `rollout` (the function) stays in sdft_kit.rollout, so the module name is not shadowed.
from .rollout import Completions, chat, generate_text
from .scoring import EMATeacher, score_teacher, teacher_view
from .trainer import Trainer, load_records
from .update import demonstration_loss, distill_loss

__version__ = "0.1.0"

__all__ = [
    "PAPER_TEMPLATE", "Config", "LossConfig", "ModelConfig", "RolloutConfig", "TeacherConfig", "TrainConfig",
    "SAMPLE_DATA", "DataError", "Example", "load_examples", "DemoSelector", "student_prompt", "teacher_prompt",
    "add_lora", "load_adapter", "load_model", "Completions", "chat", "generate_text",
    "EMATeacher", "score_teacher", "teacher_view", "Trainer", "load_records",
    "demonstration_loss", "distill_loss",
]
