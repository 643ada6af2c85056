"""What the web app does, as plain functions (no gradio here).

    settings_table(limits, ...)  the Train tab's settings, generated from the config fields (as the CLI's flags
                                 are), with the app's own words and bounds from the few tables below
    make_config(preset, **values), setting_values(config)   settings -> Config -> settings
    cli_command(config, ...)     the `sdft-kit train ...` command that runs the same training
    load_settings_yaml(bytes)    an uploaded config.yaml (the file `sdft-kit train --config` reads) as settings
    check_text(check)            the teacher check's verdict and advice in words, for the status
    evaluate_run(run_dir)        the Evaluate tab: the new-task score and the prior-skills probe, base vs trained
    export_adapter_zip(...)      the run's adapter with its model card as a zip (export_gguf_zip: merged as GGUF with
                                 an Ollama Modelfile; export_merged_zip: merged in 16-bit;
                                 push_adapter: to the Hugging Face Hub)
    compare_answers(...)         one prompt answered by the base model, the trained adapter and the teacher, timed
    chat_answer(...)             the Chat tab's answer as it grows: base, a trained run, or the teacher

`app.py` is the thin gradio front end over these; the trainings (owners, the queue) are in `app_runs.py`,
the Data tab's logic in `app_data.py`, and what a shared server allows (logins, models, sizes) in
`app_safety.py`. Tests call them directly.
"""

from __future__ import annotations

import dataclasses
import random
import shlex
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import PRESETS, TEMPLATES, Config, fields_by_section, flag, preset
from .data import Example
from .demos import student_prompt, teacher_messages, teacher_prompt
from .export import adapter_dir

TEMPLATE_CHOICES = (*TEMPLATES, "custom")


# -- the Train tab's settings, generated from the config fields ------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting of the Train tab as the page shows it: a config field, or one of the app's own."""

    name: str  # the config field's name (or an APP_OWN name)
    label: str
    info: str  # the field's help text, unless INFO words it for the app
    kind: str  # 'choice', 'switch', 'integer', 'number' or 'text'
    group: str  # 'main' or 'advanced'
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    enabled: bool = True  # False: shown greyed, and the preset's value is used (e.g. 4-bit without CUDA)
    visible: bool = True


# The app's tables. SHOWN: the config fields the Train tab shows, by group, in order; every other field keeps
# its preset's value (the CLI's flags and a YAML config set those). LABELS and INFO: where the app words a
# field its own way (else: its name and its help text). APP_OWN: settings that are not config fields.
SHOWN = {"main": ("model", "load_in_4bit", "method", "steps", "batch_size", "learning_rate", "lora_r",
                  "max_new_tokens", "threads"),
         "advanced": ("teacher", "template", "custom_template", "demo_selection", "skip_first", "alpha", "vocab",
                      "topk", "report_to", "held_out")}
LABELS = {"load_in_4bit": "4-bit base (QLoRA)", "lora_r": "LoRA rank", "max_new_tokens": "New tokens per answer",
          "teacher": "Teacher kind", "template": "Teacher template", "demo_selection": "Demonstration shown",
          "skip_first": "Skip first tokens", "alpha": "Divergence (alpha)", "topk": "k (for top-k)",
          "threads": "CPU threads", "report_to": "Experiment tracking"}
INFO = {"model": "the models this server offers ('embedded': SmolLM2-135M-Instruct, offline)",
        "template": "how the demonstration is shown: in a system message (the measured default), the paper's "
                    "wording, plain (no added words), or your own text",
        "threads": "torch CPU threads for training"}
APP_OWN = {
    "custom_template": Setting("custom_template", "Custom template", "used with 'custom': a text with {prompt} and "
                               "{demonstration}", "text", "advanced"),
    "held_out": Setting("held_out", "Held out for the Evaluate tab (%)", "records kept out of training for the "
                        "new-task score (none with fewer than 10 records)", "integer", "advanced", minimum=0,
                        maximum=50),
}
APP_DEFAULTS = {"custom_template": "", "held_out": 15}
# The presets (config.PRESETS) as the Preset menu names them; the page starts from `start_preset`.
PRESET_TITLES = {"default": "default: the measured settings", "workshop": "workshop: fast on a CPU",
                 "paper": "paper: the paper's method"}
MIN_HELD_OUT_RECORDS = 10


def start_preset(cuda: bool) -> str:
    """The preset the page starts from: the measured default, in runs short enough for a CPU when there is
    no GPU (config.PRESETS['workshop'] changes only the run's size)."""
    return "default" if cuda else "workshop"


def _field_setting(f: dataclasses.Field, group: str, maximum: float | None) -> Setting:
    """A config field as a setting: its choices, its type (switch, whole number, number, text), its bounds."""
    meta, default = f.metadata, f.default
    kind = ("choice" if meta["choices"] else "switch" if default is None or isinstance(default, bool)
            else "integer" if isinstance(default, int) else "number" if isinstance(default, float) else "text")
    top = [x for x in (meta["bounds"].get("<="), maximum) if x is not None]
    # An exclusive lower bound ('> 0') is left to the config's own check, which says what to change.
    return Setting(f.name, LABELS.get(f.name, f.name.replace("_", " ").capitalize()),
                   INFO.get(f.name, meta["help"]), kind, group, tuple(meta["choices"]), meta["bounds"].get(">="),
                   min(top) if top else None)


def settings_table(models: tuple[str, ...], max_steps: int, max_batch_size: int, max_new_tokens: int,
                   cuda: bool, cpus: int) -> dict[str, Setting]:
    """The Train tab's settings by name, in SHOWN's order, within the server's bounds."""
    fields = {f.name: f for _, f in fields_by_section()}
    bounds = {"steps": max_steps, "batch_size": max_batch_size, "max_new_tokens": max_new_tokens, "threads": cpus}
    table = {name: APP_OWN.get(name) or _field_setting(fields[name], group, bounds.get(name))
             for group, names in SHOWN.items() for name in names}
    return {**table,
            "model": dataclasses.replace(table["model"], kind="choice", choices=tuple(models)),
            "template": dataclasses.replace(table["template"], kind="choice", choices=TEMPLATE_CHOICES),
            "load_in_4bit": dataclasses.replace(table["load_in_4bit"], enabled=cuda, info=(
                "on a CUDA GPU" if cuda else "needs a CUDA GPU (none here)")),
            "threads": dataclasses.replace(table["threads"], minimum=1, visible=not cuda)}


def setting_values(config: Config, table: dict[str, Setting]) -> dict:
    """The settings' values for a config (the config fields the table shows, the template as choice + text)."""
    flat = {name: value for section in config.to_dict().values() for name, value in section.items()}
    values = {name: flat[name] for name in table if name in flat}
    values["template"], values["custom_template"] = template_setting(config.teacher.template)
    if values.get("load_in_4bit") is None and "load_in_4bit" in values:  # None: on with CUDA
        values["load_in_4bit"] = table["load_in_4bit"].enabled
    return values


def make_config(preset_name: str = "default", **values) -> Config:
    """The Config of a preset with the Train tab's settings over it, by name; raises ValueError saying what to
    change. `template` is a name from TEMPLATE_CHOICES ('custom' takes `custom_template`, a text with {prompt}
    and {demonstration}); the app's own `held_out` is not part of the config."""
    template = values.pop("template", None)
    custom = values.pop("custom_template", "")
    values.pop("held_out", None)
    if template is not None:
        if template not in TEMPLATE_CHOICES:
            raise ValueError(f"template must be one of {', '.join(TEMPLATE_CHOICES)}; got {template!r}")
        values["template"] = custom if template == "custom" else template
    if "model" in values:
        values["model"] = (values["model"] or "embedded").strip()
    return preset(preset_name).replace(**values)


def config_of(preset_name: str, values: dict, table: dict[str, Setting]) -> Config:
    """make_config of the page's values: a setting that cannot take effect here (shown greyed, e.g. 4-bit
    without CUDA) keeps the preset's value."""
    return make_config(preset_name, **{name: value for name, value in values.items() if table[name].enabled})


def template_setting(template: str) -> tuple[str, str]:
    """(choice, custom text) of the template setting for a config's template (a name or a text)."""
    if template in TEMPLATE_CHOICES:
        return template, ""
    name = next((name for name, text in TEMPLATES.items() if text == template), None)
    return (name, "") if name else ("custom", template)


def advised_values(advice: dict) -> dict:
    """The Train tab's settings (make_config's names) that apply the teacher check's advice
    (check.advised_settings): its template becomes the template choice and the custom text."""
    values = {name: value for name, value in advice.items() if name != "template"}
    if "template" in advice:
        values["template"], values["custom_template"] = template_setting(advice["template"])
    return values


def cli_command(config: Config, data: str = "demos.jsonl", out: str = "runs/my-run", preset_name: str = "default",
                columns: str | None = None) -> str:
    """`sdft-kit train` with the preset (unless the default), a flag for every field that differs from it, and
    --columns (the data's column mapping) when one was given."""
    defaults = preset(preset_name).to_dict()
    values = config.to_dict()
    parts = ["sdft-kit", "train", "--data", data, *(["--columns", columns] if columns else []), "--out", out]
    parts += ["--preset", preset_name] if preset_name != "default" else []
    for section, f in fields_by_section():
        value = values[section][f.name]
        if value == defaults[section][f.name]:
            continue
        if isinstance(value, bool):
            parts.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        else:
            parts += [flag(f.name), str(value)]
    return " ".join(shlex.quote(part) for part in parts)


def held_out_count(records: int, percent: float) -> int:
    """How many of `records` the Evaluate tab keeps out of training: `percent` of them, at least one, none
    when there are fewer than MIN_HELD_OUT_RECORDS or the percent is 0."""
    if records < MIN_HELD_OUT_RECORDS or percent <= 0:
        return 0
    return max(1, round(records * percent / 100))


def split_held_out(examples: list[Example], percent: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded choice of held_out_count records kept out, both in the data's order."""
    held = set(random.Random(seed).sample(range(len(examples)), held_out_count(len(examples), percent)))
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


# -- settings as the CLI's YAML --------------------------------------------------------------
UPLOADED_CONFIG = "uploaded config"


def load_settings_yaml(data: bytes, preset_name: str, table: dict[str, Setting]) -> tuple[dict, list[str]]:
    """The settings of an uploaded config.yaml (what `sdft-kit train --config` reads) over the preset, and the
    fields it sets that the app does not show (kept at the preset's value: set them with the CLI). A bad file
    is a ValueError naming the line."""
    with tempfile.TemporaryDirectory(prefix="sdft-kit-config-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(data)
        try:
            config = Config.load(path, base=preset(preset_name))
        except ValueError as err:
            raise ValueError(str(err).replace(str(path), UPLOADED_CONFIG)) from None
    base = preset(preset_name).to_dict()
    ignored = [f.name for section, f in fields_by_section() if f.name not in table
               and config.to_dict()[section][f.name] != base[section][f.name]]
    return setting_values(config, table), ignored


def run_config(run_dir: Path) -> Config:
    return Config.load(Path(run_dir) / "config.yaml")


# -- export, compare, chat -------------------------------------------------------------------
def export_adapter_zip(run_dir: Path, dest_dir: Path) -> Path:
    """The run's shareable adapter (export.export_adapter: PEFT files naming the real base, the tokenizer,
    the model card and the run's config) as <run>-adapter.zip."""
    from .export import export_adapter

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    target = dest_dir / f"{run_dir.name}-adapter.zip"
    with tempfile.TemporaryDirectory(dir=dest_dir) as staging:
        _zip(export_adapter(run_dir, Path(staging) / "adapter"), target, "adapter", zipfile.ZIP_DEFLATED)
    return target


def _zip(folder: Path, target: Path, root: str, compression: int) -> None:
    with zipfile.ZipFile(target, "w", compression) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{root}/{path.relative_to(folder)}")


def export_merged_zip(run_dir: Path, dest_dir: Path, dtype: str = "bfloat16") -> Path:
    """Base + adapter merged in 16-bit (export.export_merged: a 4-bit run's adapter goes into a 16-bit copy
    of its base), with the model card, as <run>-merged.zip."""
    from .export import export_merged

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    target = dest_dir / f"{run_dir.name}-merged.zip"
    with tempfile.TemporaryDirectory(dir=dest_dir) as staging:
        merged = export_merged(run_dir, Path(staging) / "merged", dtype)
        _zip(merged, target, "merged", zipfile.ZIP_STORED)  # weights barely compress: store them
    return target


def export_gguf_zip(run_dir: Path, dest_dir: Path, gguf_type: str = "q8_0") -> Path:
    """Base + adapter merged as GGUF (gguf_export.export_gguf) with an Ollama Modelfile, as <run>-gguf.zip."""
    from .gguf_export import export_gguf

    run_dir, dest_dir = Path(run_dir), Path(dest_dir)
    target = dest_dir / f"{run_dir.name}-gguf.zip"
    with tempfile.TemporaryDirectory(dir=dest_dir) as staging:
        result = export_gguf(run_dir, Path(staging) / "gguf", (gguf_type,))
        _zip(result.folder, target, "gguf", zipfile.ZIP_STORED)  # weights barely compress: store them
    return target


def push_adapter(run_dir: Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload the run's shareable adapter (with its model card) to the Hub repo `repo_id`; returns its URL.
    Offline, without a login or without rights: RuntimeError with one line saying what to do."""
    from .export import export_adapter, push

    if not repo_id or "/" not in repo_id.strip():
        raise ValueError("give the repo as owner/name, e.g. your-name/my-sdft-adapter")
    with tempfile.TemporaryDirectory() as staging:
        folder = export_adapter(run_dir, Path(staging) / "adapter")
        return push(folder, repo_id.strip(), private=private, token=token or None)


Progress = Callable[[float, str], None]


def compare_answers(prompt: str, demonstration: str, model: str = "embedded", run_dir: Path | None = None,
                    max_new_tokens: int = 64, progress: Progress | None = None) -> dict:
    """Greedy answers to one prompt: the base model, base + the run's trained adapter, and the teacher (the
    base shown the demonstration, with the run's template). No run or no demonstration gives None there.
    `seconds` holds what each part took (load, base, teacher, trained); `progress(fraction, phase)` is told
    each phase as it starts."""
    from .generation import generate_text
    from .models import load_model

    if not prompt.strip():
        raise ValueError("type a prompt to compare the answers")
    report = progress or (lambda fraction, phase: None)
    config = run_config(run_dir) if run_dir is not None else Config().replace(model=model)
    seconds: dict[str, float] = {}

    def timed(name: str, fraction: float, work: Callable):
        report(fraction, {"load": "loading the model"}.get(name, f"answering with the {name} model"))
        start = time.perf_counter()
        result = work()
        seconds[name] = round(time.perf_counter() - start, 2)
        return result

    base, tokenizer = timed("load", 0.0, lambda: load_model(config.model.model, config.model))
    example = Example(({"role": "user", "content": prompt},), demonstration)
    student = student_prompt(tokenizer, example)
    # A prompt that does not fit the model's context is refused (generation.TooLong), not answered.
    answers = {"base": timed("base", 0.25, lambda: generate_text(base, tokenizer, [student], max_new_tokens,
                                                                 names=["the prompt"])[0]),
               "trained": None, "teacher": None, "seconds": seconds}
    if demonstration.strip():
        shown = teacher_prompt(tokenizer, example, [demonstration], config.teacher.template)
        answers["teacher"] = timed("teacher", 0.5, lambda: generate_text(
            base, tokenizer, [shown], max_new_tokens, names=["the prompt with the demonstration"])[0])
    if run_dir is not None:
        from peft import PeftModel

        def trained_answer() -> str:
            trained = PeftModel.from_pretrained(base, adapter_dir(Path(run_dir)))
            return generate_text(trained, tokenizer, [student], max_new_tokens, names=["the prompt"])[0]

        answers["trained"] = timed("trained", 0.75, trained_answer)
    return answers


_chat_models: dict = {}  # one loaded (model, adapter) at a time: chat turns reuse it
_chat_lock = threading.Lock()


def _chat_model(model: str, run_dir: Path | None):
    from .models import load_adapter, load_model

    key = (model, str(run_dir))
    with _chat_lock:
        if key not in _chat_models:
            _chat_models.clear()  # free the previous model before loading the next
            config = run_config(run_dir).model if run_dir is not None else Config().replace(model=model).model
            _chat_models[key] = load_adapter(adapter_dir(run_dir), config) if run_dir is not None \
                else load_model(config.model, config)
        return _chat_models[key]


def chat_answer(messages: list[dict], *, model: str = "embedded", run_dir: Path | None = None,
                demonstration: str | None = None, template: str = "system", max_new_tokens: int = 96,
                temperature: float = 0.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                stop: tuple[str, ...] = ()) -> Iterator[str]:
    """The answer to a conversation (ending with a user turn) as it grows, from the base model, a run's
    trained adapter (`run_dir`), or the teacher: the base model shown `demonstration` in the last user
    turn, framed by `template`."""
    from .generation import stream_chat

    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise ValueError("type a message first")
    if demonstration is not None:
        if not demonstration.strip():
            raise ValueError("paste a demonstration for the teacher to see")
        messages = teacher_messages(Example(tuple(messages), demonstration), [demonstration], template)
    loaded, tokenizer = _chat_model(model, run_dir)
    yield from stream_chat(loaded, tokenizer, messages, max_new_tokens, temperature=temperature, top_p=top_p,
                           repetition_penalty=repetition_penalty, stop=stop)


def preset_choices() -> list[tuple[str, str]]:
    """The Preset menu: (title, name) of each of config.PRESETS."""
    return [(PRESET_TITLES.get(name, name), name) for name in PRESETS]


# -- the teacher check, in words -------------------------------------------------------------
def _quality(result) -> str:
    measure, student, teacher = result.quality()
    if teacher is None:
        return "not measured"
    return f"{student:.0%} → {teacher:.0%}" if measure == "accuracy" else f"{student:.2f} → {teacher:.2f}"


def check_text(check) -> str:
    """The teacher check (check.TeacherCheck) as the status shows it: the verdict with the template that
    teaches best, each template's verdict and answer quality, then the advice, in words."""
    measure = "accuracy" if check.scorer else "ROUGE-L F1"
    rows = " · ".join(f"{r.template} {r.verdict.upper()} ({_quality(r)})" for r in check.results)
    which = f"the template '{check.best}'" + (f", best of {len(check.results)}" if len(check.results) > 1 else "")
    text = (f"**Teacher check: {check.verdict.upper()}** with {which} ({check.records} records, "
            f"{check.seconds:.0f} s). How close greedy answers come to the demonstrations ({measure}), from the "
            f"question alone → with the demonstration in context: {rows}.")
    return text + "".join(f"\n- {line}" for line in check.advice)


def advice_for(check, config: Config) -> dict:
    """The settings the check advises (check.settings) that the run's config does not have already."""
    from .check import template_label

    current = {name: value for section in config.to_dict().values() for name, value in section.items()}
    current["template"] = template_label(config.teacher.template) if template_label(config.teacher.template) \
        != "custom" else config.teacher.template
    return {name: value for name, value in (check.settings or {}).items() if current.get(name) != value}


def advice_label(advice: dict) -> str:
    """The Apply button's words: 'Use the teacher check's advice: template 'system', skip first tokens 14'."""
    return "Use the teacher check's advice: " + ", ".join(
        f"{LABELS.get(name, name).lower()} '{value}'" if isinstance(value, str) else
        f"{LABELS.get(name, name).lower()} {value}" for name, value in advice.items())
