"""Run configuration: one dataclass per concern, each field with a default and help.

A YAML file maps onto it section by section (model:, teacher:, rollout:, loss:,
train:, monitor:), and every field is also a CLI flag of `sdft-kit train` (`--lora-r 8`).
The choices of every mode are `Literal` types below; their tuples (`TEACHER_KINDS`,
`ENGINES`, ...) are what the config, the CLI and the app offer.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

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

# The training methods: the names of sdft_kit.methods' table (its `register` adds new ones to this list).
METHODS: list[str] = ["sdft", "sft"]
# Who scores the student's tokens: see teachers.make_teacher.
TeacherKind = Literal["ema", "base", "factor_ema", "live"]
# The teacher prompts' thinking switch: 'same' as the student's (model.thinking), or its own.
TeacherThinking = Literal["same", "auto", "on", "off"]
# Which tokens a top-k loss compares the two distributions on: see losses.topk_support.
TopkSupport = Literal["teacher", "student", "union"]
# One importance weight per token, or their mean per sequence (the official code's): see update.importance_weights.
ISLevel = Literal["token", "sequence"]
# What samples the rollouts: see rollout.make_engine ('auto': rollout.resolve_engine picks one of the others).
Engine = Literal["auto", "hf", "vllm"]
DemoSelection = Literal["own", "retrieval", "random"]
Vocab = Literal["full", "topk", "sampled"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Thinking = Literal["auto", "on", "off"]
Device = Literal["auto", "cpu", "cuda"]
# Where step records are also logged: see tracking.open_tracker ('auto': trackio when installed, else none).
ReportTo = Literal["auto", "trackio", "tensorboard", "wandb", "none"]
# Which adapters a run keeps: see monitor.py ('tradeoff': the forgetting monitor's Pareto front too).
KeepCheckpoints = Literal["last", "tradeoff"]

# A list: teachers.register_teacher adds a kind defined elsewhere (as methods.register does to METHODS).
TEACHER_KINDS: list[str] = list(get_args(TeacherKind))
# A list: rollout.register_engine adds an engine defined elsewhere.
ENGINES: list[str] = list(get_args(Engine))
DEMO_SELECTIONS: tuple[str, ...] = get_args(DemoSelection)
VOCABS: tuple[str, ...] = get_args(Vocab)
DTYPES: tuple[str, ...] = get_args(Dtype)
DEVICES: tuple[str, ...] = get_args(Device)
THINKING: tuple[str, ...] = get_args(Thinking)
TEACHER_THINKING: tuple[str, ...] = get_args(TeacherThinking)
TOPK_SUPPORTS: tuple[str, ...] = get_args(TopkSupport)
IS_LEVELS: tuple[str, ...] = get_args(ISLevel)
REPORT_TO: tuple[str, ...] = get_args(ReportTo)
KEEP_CHECKPOINTS: tuple[str, ...] = get_args(KeepCheckpoints)
# Fields renamed since a run directory's config.yaml may have been written: old name -> new name.
RENAMED = {"weights": "engine"}


def _help(default: Any, text: str, *, choices: tuple = (), at_least: float | None = None,
          above: float | None = None, at_most: float | None = None, below: float | None = None) -> Any:
    """A field with its help text and what `_check` validates: one of `choices`, or a number in the bounds."""
    bounds = {">=": at_least, ">": above, "<=": at_most, "<": below}
    return field(default=default, metadata={"help": text, "choices": choices,
                                            "bounds": {op: x for op, x in bounds.items() if x is not None}})


_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}
_COMPARE = {">=": lambda v, x: v >= x, ">": lambda v, x: v > x, "<=": lambda v, x: v <= x, "<": lambda v, x: v < x}
_INVALID = object()


def _typed(f: dataclasses.Field, value: Any) -> Any:
    """`value` as the field's type (its default's), else _INVALID. A float field also takes an int or a
    numeric text: YAML 1.1 reads `5e-4` (no dot) as a string."""
    kind = bool if f.default is None else type(f.default)  # None: an optional switch, e.g. load_in_4bit
    if value is None and f.default is None or isinstance(value, kind) and isinstance(value, bool) == (kind is bool):
        return value
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    return _INVALID


def _check(section: Any) -> None:
    """Validate a section's fields (type, choices, finite and within bounds), naming the field and what to change."""
    section_name = type(section).__name__.removesuffix("Config").lower()
    for f in dataclasses.fields(section):
        value, choices, bounds = getattr(section, f.name), f.metadata["choices"], f.metadata["bounds"]
        typed = _typed(f, value)
        if typed is _INVALID:
            wanted = _TYPE_NAMES[bool if f.default is None else type(f.default)]
        elif choices and typed not in choices:
            wanted = f"one of {', '.join(map(str, choices))}"
        elif isinstance(typed, float) and not math.isfinite(typed):
            wanted = "a finite number"
        elif bounds and not all(_COMPARE[op](typed, x) for op, x in bounds.items()):
            wanted = " and ".join(f"{op} {x:g}" for op, x in bounds.items())
        else:
            setattr(section, f.name, typed)
            continue
        raise ValueError(f"{f.name} must be {wanted}; got {value!r} (set it with {flag(f.name)}, or under "
                         f"'{section_name}:' in a YAML config)")


@dataclass
class ModelConfig:
    model: str = _help("embedded", "'embedded' (SmolLM2-135M-Instruct, offline), a Hugging Face id or a local path")
    load_in_4bit: bool | None = _help(None, "4-bit NF4 base (QLoRA); default: on with CUDA; on a CPU an explicit "
                                            "opt-in (bitsandbytes' CPU backend)")
    dtype: Dtype = _help("auto", "'auto' (bf16 on CUDA, fp16 on GPUs without bf16 such as the T4, fp32 on CPU), "
                        "'float32', 'bfloat16' or 'float16'", choices=DTYPES)
    device: Device = _help("auto", "'auto' (CUDA if available, else CPU), 'cpu' or 'cuda'", choices=DEVICES)
    lora_r: int = _help(16, "LoRA rank", at_least=1)
    lora_alpha: int = _help(32, "LoRA scaling alpha", at_least=1)
    lora_dropout: float = _help(0.0, "LoRA dropout (0 keeps rollout and scoring policies identical)",
                                 at_least=0, below=1)
    lora_target: str = _help("all-linear", "modules to adapt: 'all-linear' or a comma-separated list of names")
    trust_remote_code: bool = _help(False, "run model code from the Hub (off: only for models you trust)")
    thinking: Thinking = _help("auto", "chat templates with a thinking switch (Qwen3's enable_thinking): 'on' or "
                                       "'off' for every prompt, student and teacher alike; 'auto' keeps the "
                                       "template's default", choices=THINKING)

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class TeacherConfig:
    teacher: TeacherKind = _help("base", "teacher weights: 'base' (adapter off, the frozen start; the default preset), "
                                         "'ema' (the paper's: an EMA of the student's weights), 'factor_ema' (EMA of the "
                                         "LoRA factors A and B taken apart, not of the weights: sdft-kit's earlier 'ema', "
                                         "TRL's) or 'live' (current student)", choices=TEACHER_KINDS)
    ema_rate: float = _help(0.01, "EMA update: teacher = rate * student + (1 - rate) * teacher, after each step",
                             above=0, at_most=1)
    ema_rank: int = _help(2, "teacher 'ema': how each adapted layer keeps the EMA of its weight delta: 0 = dense "
                             "(exact; a d_out x d_in float32 matrix per layer, ~4 bytes per adapted base weight), "
                             "k >= 1 = rank k x lora_r, re-truncated by a small SVD after each step "
                             "(see docs/fidelity.md)", at_least=0)
    anchor: float = _help(0.0, "teacher 'ema' anchored to the base: after each EMA update the teacher's delta is "
                               "scaled by (1 - anchor), pulling it back toward the starting model (0: plain EMA); "
                               "with a still student it settles at rate / (rate + anchor) of the way to it",
                          at_least=0, below=1)
    demo_selection: DemoSelection = _help("own", "demonstrations in the teacher prompt: 'own' (paper), "
                                                 "'retrieval' or 'random'", choices=DEMO_SELECTIONS)
    num_demos: int = _help(1, "how many demonstrations 'retrieval' and 'random' put in the teacher prompt",
                           at_least=1)
    template: str = _help("system", "teacher prompt: 'system' (the default preset), 'paper', 'plain' (see sdft-kit "
                                    "check-teacher) or a text with {prompt} and {demonstration}")
    teacher_chat_template: str = _help("", "chat template for the teacher's prompts: '' = the student's (the "
                                           "tokenizer's), else a .jinja file or the template's text")
    teacher_thinking: TeacherThinking = _help("same", "the teacher prompts' thinking switch (Qwen3's "
                                                      "enable_thinking): 'same' as model.thinking, or 'auto', 'on', "
                                                      "'off' for the teacher alone (OPSD: a thinking teacher, a "
                                                      "non-thinking student)", choices=TEACHER_THINKING)

    def __post_init__(self) -> None:
        _check(self)
        for slot in ("{prompt}", "{demonstration}"):
            if self.template not in TEMPLATES and slot not in self.template:
                raise ValueError(f"template must contain {slot}; got {self.template!r}")
        if self.anchor and self.teacher != "ema":
            raise ValueError(f"anchor pulls the weight EMA teacher back toward the base; it needs --teacher ema, not "
                             f"{self.teacher!r} (or set --anchor 0)")


@dataclass
class RolloutConfig:
    max_new_tokens: int = _help(128, "longest student answer sampled per prompt", at_least=1)
    temperature: float = _help(1.0, "sampling temperature (paper: 1.0)", above=0)
    top_p: float = _help(1.0, "nucleus sampling (paper: 1.0)", above=0, at_most=1)
    generations_per_prompt: int = _help(1, "student samples per prompt (paper: 1)", at_least=1)
    steps_per_generation: int = _help(1, "optimizer steps whose rollouts one engine call samples together (as TRL "
                                         "calls it): the later steps reuse them, each token weighted by "
                                         "p_student_now / p_sampler (capped at loss.is_cap) for the policy having "
                                         "moved. 1: every step samples its own (on-policy, the paper's)", at_least=1)
    max_context: int = _help(0, "tokens a prompt (student's or teacher's) plus max_new_tokens may take; 0: the "
                                "model's context. Longer records stop the run before step 1 (see sdft-kit inspect)",
                             at_least=0)
    engine: Engine = _help("auto", "what samples the rollouts: 'auto' (vllm where vLLM is installed and the run is "
                                   "one process on a full-precision base, else hf; the run says which it picked), "
                                   "'hf' (transformers' generate with the student's own weights), 'vllm' (a vLLM "
                                   "engine in the training process, synced with the student after every step, for "
                                   "faster decoding; pip install 'sdft-kit[vllm]', on a GPU 'sdft-kit[vllm-cuda]'). "
                                   "vLLM's copy may differ slightly from the student (bf16, other kernels); the loss "
                                   "corrects for it by truncated importance sampling, see loss.is_cap. The "
                                   "environment variable SDFT_KIT_AUTO_ENGINE=hf makes 'auto' pick hf",
                           choices=ENGINES)
    vllm_dtype: Dtype = _help("auto", "vllm engine's dtype: 'auto' (bf16 on CUDA, fp16 on GPUs without bf16; on CPUs "
                                      "bf16 only with native bf16, AVX512-BF16 or AMX, else fp32), 'float32', "
                                      "'bfloat16' or 'float16'", choices=DTYPES)
    vllm_compile: bool = _help(False, "vllm engine: compile the model (torch.compile, CUDA graphs on a GPU) for faster "
                                      "decoding, at a longer start (~2 min on a CPU); off runs it eagerly")
    vllm_kv_cache_mb: int = _help(0, "vllm engine on CPU: memory for its KV cache in MiB; 0 sizes it from the run "
                                     "(batch x generations x (longest student prompt + max_new_tokens)), 256 MiB "
                                     "where the run is not known. The env var VLLM_CPU_KVCACHE_SPACE overrides it",
                                  at_least=0)
    vllm_gpu_memory: float = _help(0.3, "vllm engine on CUDA: share of the GPU's memory it may take for its weights "
                                        "and KV cache (the rest is left for training)", above=0, below=1)

    def __post_init__(self) -> None:
        if self.engine == "int8":  # removed (vllm decodes faster); run directories that used it still load
            warnings.warn("rollout.engine 'int8' no longer exists: using 'hf' (or choose 'vllm')", stacklevel=3)
            self.engine = "hf"
        _check(self)
        if 0 < self.vllm_kv_cache_mb < 16:
            raise ValueError(f"vllm_kv_cache_mb must be 0 (sized from the run) or >= 16; got {self.vllm_kv_cache_mb} "
                             f"(set it with {flag('vllm_kv_cache_mb')}, or under 'rollout:' in a YAML config)")


@dataclass
class LossConfig:
    alpha: float = _help(0.0, "0 = forward KL(teacher||student) (paper), 1 = reverse KL, between = generalised JSD",
                          at_least=0, at_most=1)
    vocab: Vocab = _help("full", "distributions compared over: 'full' vocabulary, a 'topk' support, or "
                                 "'sampled' token + rest", choices=VOCABS)
    topk: int = _help(100, "k for vocab='topk'", at_least=1)
    topk_support: TopkSupport = _help("teacher", "vocab='topk': whose top-k tokens: 'teacher' (TRL's with a teacher "
                                                 "server), 'student' (TRL's default) or 'union' of both; 'student' and "
                                                 "'union' keep the teacher's full log-probs until the student pass",
                                      choices=TOPK_SUPPORTS)
    topk_tail: bool = _help(True, "vocab='topk': add a bucket for the mass outside the top-k (on), or renormalise the "
                                  "top-k to sum to 1 (off: TRL's default, distillation_add_tail=False)")
    kl_clip: float = _help(0.0, "cap on each vocabulary term p*log(p/q) of a token's divergence (0: none; OPSD uses "
                                "0.05): a term above it adds the cap and no gradient", at_least=0)
    skip_first: int = _help(0, "completion tokens left out of the loss at the start (paper: 3)", at_least=0)
    is_cap: float = _help(2.0, "cap on each token's importance ratio p_student/p_sampler when rollouts come from other "
                               "weights (rollout.engine 'vllm', or steps_per_generation > 1), as the official code "
                               "does for vLLM (TRL's SDFT corrects reused rollouts only)",
                          at_least=1)
    is_level: ISLevel = _help("sequence", "importance weights for rollouts from other weights: 'sequence' = each "
                                          "sequence's capped ratios averaged over its loss tokens into one weight (the "
                                          "official code's), 'token' = each token's own capped ratio",
                              choices=IS_LEVELS)

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class TrainConfig:
    method: str = _help("sdft", "'sdft' (self-distillation) or 'sft' (baseline on the same data and LoRA); see "
                                "sdft_kit.methods", choices=METHODS)
    steps: int = _help(50, "optimizer steps", at_least=1)
    batch_size: int = _help(4, "prompts per micro-batch", at_least=1)
    grad_accum: int = _help(1, "micro-batches per optimizer step", at_least=1)
    chunk_size: int = _help(1, "sequences per teacher/student pass (0 = whole batch): smaller saves memory, "
                               "same loss and gradients", at_least=0)
    learning_rate: float = _help(1e-3, "AdamW learning rate (LoRA rates are ~10x full fine-tuning's)", above=0,
                                at_most=1)
    warmup_ratio: float = _help(0.1, "share of steps with linear warm-up before the cosine decay", at_least=0,
                               below=1)
    max_grad_norm: float = _help(1.0, "gradient-norm clip", above=0)
    weight_decay: float = _help(0.0, "AdamW weight decay (paper: none)", at_least=0)
    seed: int = _help(0, "seed for data order, sampling and LoRA init", at_least=0)
    save_every: int = _help(1, "checkpoint every N steps (1: every completed step survives a crash); a stop (Ctrl-C), "
                                "the last step and too many non-finite steps always checkpoint", at_least=1)
    max_bad_steps: int = _help(3, "a step whose loss or gradients are not finite is skipped (weights unchanged); "
                                  "training stops after this many in a row", at_least=1)
    record_topk: int = _help(5, "top-k tokens kept per position in the step records", at_least=1)
    threads: int = _help(0, "torch CPU threads (0: leave torch's default)", at_least=0)
    release_memory: bool = _help(True, "on Linux CPUs, give freed tensor memory back to the OS at once (glibc's "
                                       "mmap threshold fixed at 128 KiB): lower peak RSS for a few percent of step time")
    report_to: ReportTo = _help("auto", "experiment tracker for the step records and sampled completions: 'trackio' "
                                        "(local-first), 'tensorboard' (run dir's tensorboard/), 'wandb', 'none'; "
                                        "'auto' = trackio when installed, else none", choices=REPORT_TO)

    def __post_init__(self) -> None:
        _check(self)


@dataclass
class MonitorConfig:
    """The forgetting monitor (monitor.py): off by default; what it costs is in docs/instruments.md."""

    monitor_every: int = _help(0, "forgetting monitor: score the prior-skills probe and the new task before step 1, "
                                  "every N steps and at the last step, into the step records; 0 = off", at_least=0)
    monitor_probe: str = _help("skills_probe", "prior skills: the bundled 'skills_probe' or a JSONL file of eval "
                                               "items (prompt, answers, kind, choices: see tasks.load_eval_items)")
    monitor_new_task: str = _help("holdout", "new task: 'holdout' (ROUGE-L F1 of greedy answers to the demonstrations "
                                             "of monitor_holdout records kept out of training), or a bundled task's "
                                             "name or an eval-items JSONL file (accuracy on its items)")
    monitor_holdout: int = _help(8, "training records held out (never trained on) for monitor_new_task 'holdout'",
                                 at_least=1)
    monitor_limit: int = _help(32, "items of the probe (and of an eval-items new task) scored each time; 0 = all",
                               at_least=0)
    keep_checkpoints: KeepCheckpoints = _help("last", "'last': the final adapter; 'tradeoff': also the adapter of "
                                                      "every monitored step on the Pareto front of (new task, prior "
                                                      "skills), in checkpoints/step-N/adapter; the model card names "
                                                      "the chosen one", choices=KEEP_CHECKPOINTS)
    monitor_tolerance: float = _help(0.05, "the model card's choice among monitored steps: the best new-task score "
                                           "among those whose prior-skills score is at most this much below the "
                                           "start's (0.05: 5 points)", at_least=0, at_most=1)

    def __post_init__(self) -> None:
        _check(self)
        if self.keep_checkpoints == "tradeoff" and not self.monitor_every:
            raise ValueError("keep_checkpoints 'tradeoff' keeps the forgetting monitor's best steps: set monitor_every "
                             "(e.g. --monitor-every 5) as well")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict, where: str = "config", base: Config | None = None) -> Config:
        """The config of a mapping of sections (a YAML file's); a field it leaves out keeps `base`'s value
        (default: the defaults)."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(data) - set(sections)
        if unknown:
            raise ValueError(f"{where}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
        built = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            given = data.get(f.name) or {}
            if not isinstance(given, dict):
                raise ValueError(f"{where}: section '{f.name}' must be a mapping of fields (e.g. '{f.name}:' then "
                                 f"indented 'name: value' lines); got {given!r}")
            given = dict(given)
            known = {x.name for x in dataclasses.fields(section_cls)}
            for old, new in RENAMED.items():
                if old in given and new in known and new not in given:
                    given[new] = {"exact": "hf"}.get(given[old], given[old])
                    del given[old]
            values = {**(dataclasses.asdict(getattr(base, f.name)) if base is not None else {}), **given}
            bad = set(values) - known
            if bad:
                raise ValueError(f"{where}: unknown field(s) {sorted(bad)} in section '{f.name}'; known: {sorted(known)}")
            try:
                built[f.name] = section_cls(**values)
            except ValueError as err:
                raise ValueError(f"{where}: {err}" if where != "config" else str(err)) from None
        return cls(**built)

    @classmethod
    def load(cls, path: str | Path, base: Config | None = None) -> Config:
        """A YAML file's config; a field it leaves out keeps `base`'s value (default: the defaults)."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            raise ValueError(f"{path}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({err.problem}); "
                             "check the indentation and the 'key: value' form of each line") from None
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err}); check the 'key: value' form of each line") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (UTF-8); save the config as plain text") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections (model:, train:, ...)")
        return cls.from_dict(data, where=str(path), base=base)

    def replace(self, **overrides: Any) -> Config:
        """A copy with flat field overrides, e.g. replace(lora_r=8, steps=10)."""
        data = self.to_dict()
        owner = {name: section for section, fields in data.items() for name in fields}
        for name, value in overrides.items():
            if name not in owner:
                raise ValueError(f"unknown config field {name!r}")
            data[owner[name]][name] = value
        return Config.from_dict(data)


# Named settings, as overrides of the defaults (`--preset NAME`, the app's Preset menu). The defaults
# themselves are the measured preset: docs/instruments.md section 3 (the teacher check and 3 seeds of
# training on the bundled sample) supports the 'system' template, lr 1e-3 and skip_first 0 with the
# base model as teacher; the paper's template pulled the student away from the demonstrations there.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # short runs a CPU finishes in a few minutes (a workshop, the app's first run)
    "workshop": {"steps": 12, "batch_size": 2, "max_new_tokens": 48, "threads": 1},
    # the paper's method (Shenfeld et al., 2026): its teacher prompt, EMA teacher, forward KL over the
    # full vocabulary, the first 3 completion tokens skipped
    "paper": {"template": "paper", "teacher": "ema", "ema_rate": 0.01, "alpha": 0.0, "vocab": "full",
              "skip_first": 3, "temperature": 1.0, "top_p": 1.0},
}


def preset(name: str) -> Config:
    """The config of a named preset (see PRESETS)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return Config().replace(**PRESETS[name])


def fields_by_section() -> list[tuple[str, dataclasses.Field]]:
    """(section, field) for every config field, for building CLI flags and UI forms."""
    cfg = Config()
    return [(s.name, f) for s in dataclasses.fields(Config) for f in dataclasses.fields(getattr(cfg, s.name))]


def flag(name: str) -> str:
    """The CLI flag of a config field: lora_r -> --lora-r."""
    return "--" + name.replace("_", "-")
