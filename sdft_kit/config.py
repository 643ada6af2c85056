"""Run configuration: one dataclass per concern, each field with a default and help.

A YAML file maps onto it section by section (model:, teacher:, rollout:, loss:,
train:), and every field is also a CLI flag of `sdft-kit train` (`--lora-r 8`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The paper's teacher prompt (Shenfeld et al., 2026): query, the demonstration framed
# as an example, then a request for an answer of the model's own.
PAPER_TEMPLATE = (
    "{prompt}\n\n"
    "This is an example for a response to the question:\n"
    "{demonstration}\n\n"
    "Now answer with a response of your own, including the thinking process."
)
# Teacher framings to choose from by name (`--template plain`); compare them with
# `sdft-kit check-teacher`. "system" leaves the query as it is and puts this text, with
# the demonstration, in a system message (see demos.teacher_messages).
PLAIN_TEMPLATE = "{prompt}\n\n{demonstration}"  # TRL's default
SYSTEM_TEMPLATE = "Here is an example of a good response to the user's next question:\n{demonstration}"
TEMPLATES = {"paper": PAPER_TEMPLATE, "plain": PLAIN_TEMPLATE, "system": SYSTEM_TEMPLATE}


def _help(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass
class ModelConfig:
    model: str = _help("embedded", "'embedded' (SmolLM2-135M-Instruct, offline), a Hugging Face id or a local path")
    load_in_4bit: bool | None = _help(None, "4-bit NF4 base (QLoRA); default: on when CUDA is available")
    dtype: str = _help("auto", "'auto' (bf16 on CUDA, fp16 on GPUs without bf16 such as the T4, fp32 on CPU), "
                      "'float32', 'bfloat16' or 'float16'")
    device: str = _help("auto", "'auto' (CUDA if available, else CPU), 'cpu' or 'cuda'")
    lora_r: int = _help(16, "LoRA rank")
    lora_alpha: int = _help(32, "LoRA scaling alpha")
    lora_dropout: float = _help(0.0, "LoRA dropout (0 keeps rollout and scoring policies identical)")
    lora_target: str = _help("all-linear", "modules to adapt: 'all-linear' or a comma-separated list of names")
    trust_remote_code: bool = _help(False, "run model code from the Hub (off: only for models you trust)")

    def __post_init__(self) -> None:
        _choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1; got {self.lora_r}")


@dataclass
class TeacherConfig:
    teacher: str = _help("ema", "teacher weights: 'ema' (paper), 'base' (adapter off) or 'live' (current student)")
    ema_rate: float = _help(0.01, "EMA update: teacher = rate * student + (1 - rate) * teacher, after each step")
    demo_selection: str = _help("own", "demonstrations in the teacher prompt: 'own' (paper), 'retrieval' or 'random'")
    num_demos: int = _help(1, "how many demonstrations 'retrieval' and 'random' put in the teacher prompt")
    template: str = _help(PAPER_TEMPLATE, "teacher prompt: 'paper', 'plain', 'system' (see sdft-kit check-teacher) "
                                          "or a text with {prompt} and {demonstration}")

    def __post_init__(self) -> None:
        _choice("teacher", self.teacher, ("ema", "base", "live"))
        _choice("demo_selection", self.demo_selection, ("own", "retrieval", "random"))
        if not 0.0 < self.ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1]; got {self.ema_rate}")
        if self.num_demos < 1:
            raise ValueError(f"num_demos must be >= 1; got {self.num_demos}")
        for slot in ("{prompt}", "{demonstration}"):
            if self.template not in TEMPLATES and slot not in self.template:
                raise ValueError(f"template must contain {slot}; got {self.template!r}")


@dataclass
class RolloutConfig:
    max_new_tokens: int = _help(128, "longest student answer sampled per prompt")
    temperature: float = _help(1.0, "sampling temperature (paper: 1.0)")
    top_p: float = _help(1.0, "nucleus sampling (paper: 1.0)")
    generations_per_prompt: int = _help(1, "student samples per prompt (paper: 1)")
    weights: str = _help("exact", "weights the student decodes with: 'exact' (its own) or 'int8' (a per-rollout "
                                  "int8 copy, CPU only: faster sampling from a slightly different policy, corrected "
                                  "by truncated importance sampling, see loss.is_cap)")

    def __post_init__(self) -> None:
        _choice("weights", self.weights, ("exact", "int8"))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")


@dataclass
class LossConfig:
    alpha: float = _help(0.0, "0 = forward KL(teacher||student) (paper), 1 = reverse KL, between = generalised JSD")
    vocab: str = _help("full", "distributions compared over: 'full' vocabulary, teacher 'topk' + tail, or 'sampled' token + rest")
    topk: int = _help(100, "k for vocab='topk'")
    skip_first: int = _help(3, "completion tokens left out of the loss at the start (paper: 3)")
    is_cap: float = _help(2.0, "cap on the importance weight p_student/p_sampler of each token when rollouts come "
                               "from other weights (rollout.weights='int8'), as the official code does for vLLM")

    def __post_init__(self) -> None:
        _choice("vocab", self.vocab, ("full", "topk", "sampled"))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if self.topk < 1 or self.skip_first < 0:
            raise ValueError("topk must be >= 1 and skip_first >= 0")
        if self.is_cap < 1:
            raise ValueError(f"is_cap must be >= 1; got {self.is_cap}")


@dataclass
class TrainConfig:
    method: str = _help("sdft", "'sdft' (self-distillation) or 'sft' (baseline on the same data and LoRA)")
    steps: int = _help(50, "optimizer steps")
    batch_size: int = _help(4, "prompts per micro-batch")
    grad_accum: int = _help(1, "micro-batches per optimizer step")
    chunk_size: int = _help(1, "sequences per teacher/student pass (0 = whole batch): smaller saves memory, "
                               "same loss and gradients")
    learning_rate: float = _help(5e-4, "AdamW learning rate (LoRA rates are ~10x full fine-tuning's)")
    warmup_ratio: float = _help(0.1, "share of steps with linear warm-up before the cosine decay")
    max_grad_norm: float = _help(1.0, "gradient-norm clip")
    weight_decay: float = _help(0.0, "AdamW weight decay (paper: none)")
    seed: int = _help(0, "seed for data order, sampling and LoRA init")
    save_every: int = _help(25, "checkpoint every N steps (and at the end)")
    record_topk: int = _help(5, "top-k tokens kept per position in the step records")
    threads: int = _help(0, "torch CPU threads (0: leave torch's default)")
    release_memory: bool = _help(True, "on Linux CPUs, give freed tensor memory back to the OS at once (glibc's "
                                       "mmap threshold fixed at 128 KiB): lower peak RSS for a few percent of step time")

    def __post_init__(self) -> None:
        _choice("method", self.method, ("sdft", "sft"))
        for name in ("steps", "batch_size", "grad_accum", "save_every", "record_topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0; got {self.chunk_size}")
        if self.learning_rate <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("learning_rate must be > 0 and warmup_ratio in [0, 1)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> Config:
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ValueError(f"{where}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        built = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            values = data.get(f.name) or {}
            known = {x.name for x in dataclasses.fields(section_cls)}
            bad = set(values) - known
            if bad:
                raise ValueError(f"{where}: unknown field(s) {sorted(bad)} in section '{f.name}'; known: {sorted(known)}")
            built[f.name] = section_cls(**values)
        return cls(**built)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: config file not found")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections (model:, train:, ...)")
        return cls.from_dict(data, where=str(path))

    def replace(self, **overrides: Any) -> Config:
        """A copy with flat field overrides, e.g. replace(lora_r=8, steps=10)."""
        data = self.to_dict()
        owner = {name: section for section, fields in data.items() for name in fields}
        for name, value in overrides.items():
            if name not in owner:
                raise ValueError(f"unknown config field {name!r}")
            data[owner[name]][name] = value
        return Config.from_dict(data)


def fields_by_section() -> list[tuple[str, dataclasses.Field]]:
    """(section, field) for every config field, for building CLI flags and UI forms."""
    cfg = Config()
    return [(s.name, f) for s in dataclasses.fields(Config) for f in dataclasses.fields(getattr(cfg, s.name))]
