"""`sdft-kit` command line: train, demo, generate, check-teacher, compare, continual, sweep, objectives, inspect,
export, push.

Every config field is a flag of `train` (`--lora-r 8`, `--teacher base`); a flag
overrides the YAML given with --config, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings
from pathlib import Path

from .checkpoint import RESUMABLE, newest_checkpoint, require_run
from .config import PRESETS, Config, fields_by_section, flag, preset
from .data import SAMPLE_DATA, DataError, describe, format_name, load_examples, parse_columns
from .driver import NonFiniteSteps


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), help="named settings under --config and the flags: "
                        "'default' (measured on the bundled sample, docs/instruments.md), 'workshop' (short runs "
                        "on a CPU), 'paper' (the paper's teacher template, EMA teacher and loss)")
    for section, f in fields_by_section():
        if f.name in skip:
            continue
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"[{section}] {f.metadata['help']}"}
        if isinstance(f.default, bool) or f.default is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(f.default)
        parser.add_argument(flag(f.name), **kwargs)


def build_config(args: argparse.Namespace, defaults: dict | None = None, base: Config | None = None) -> Config:
    """The run's config: `base` (a resumed run's), else --preset's (with `defaults` applied); then --config's
    YAML over it; then every flag given."""
    if base is None:
        base = preset(getattr(args, "preset", None) or "default").replace(**(defaults or {}))
    config = Config.load(args.config, base=base) if getattr(args, "config", None) else base
    overrides = {name: getattr(args, name) for _, f in fields_by_section() if hasattr(args, name := f.name)}
    return config.replace(**overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from .tracking import require_tracker
    from .trainer import Trainer

    out = Path(args.out)
    saved = None
    if args.resume:
        require_run(out)  # a folder that merely holds a config.yaml is not a run to resume
        saved = Config.load(out / "config.yaml")  # flags change it where a resumed run allows (Trainer checks)
    config = build_config(args, base=saved)
    examples = load_examples(args.data, columns=args.columns)  # bad data fails here, before any model is loaded
    print(f"{len(examples)} examples from {args.data} (format: {format_name(examples)}); method "
          f"{config.train.method}, model {config.model.model}")
    require_tracker(config.train.report_to)  # a missing tracker package fails here too, before the model loads
    trainer = Trainer(config, examples, out, resume=args.resume)  # checks and locks --out before the model loads
    try:
        return _train(trainer, args, config, out)  # launched as several processes: process 0 alone speaks (main)
    finally:
        trainer.close()


def _train(trainer, args: argparse.Namespace, config: Config, out: Path) -> int:
    from .driver import train

    if args.resume:
        print(f"resuming at step {trainer.step}" + ("" if trainer.step else " (no checkpoint yet: from the start)"))
    if trainer.inspection.warnings:
        print(trainer.inspection.summary() + "\n(see them with sdft-kit inspect)", file=sys.stderr, flush=True)
    # Before step 1 of SDFT: a few seconds' look at whether the model can teach itself on this data.
    outcome = train(trainer, check=not args.skip_check, echo=True, catch_signals=True)
    if outcome.stopped:  # by Ctrl-C
        kept = (f"the checkpoint of step {outcome.saved_step} is in {out / 'checkpoint'}; continue with --resume"
                if outcome.saved_step else "no step was completed, so nothing is kept")
        print(f"stopped after step {outcome.step}/{config.train.steps}: {kept}", file=sys.stderr)
        return 130
    print(f"adapter saved to {out / 'adapter'} (with its model card, README.md); step records in "
          f"{out / 'metrics.jsonl'}")
    return 0


DEMO_FORMAT = "Answer:"  # how every bundled sample demonstration opens


def demo_metrics(model, tokenizer, examples, max_new_tokens: int = 40) -> dict:
    """The student's greedy answers to the examples' prompts, and how close they are to the demonstrations.

    format: share of answers opening with DEMO_FORMAT, as the demonstrations do;
    similarity: mean ROUGE-L F1 of the answers to the demonstrations (check.similarity).
    """
    from .generation import generate_text
    from .check import similarity
    from .demos import student_prompt

    answers = generate_text(model, tokenizer, [student_prompt(tokenizer, ex) for ex in examples], max_new_tokens)
    share = sum(a.strip().startswith(DEMO_FORMAT) for a in answers) / len(answers)
    mean = sum(similarity(a, ex.demonstration) for a, ex in zip(answers, examples)) / len(answers)
    return {"answers": answers, "format": share, "similarity": mean,
            "summary": f"{share:.0%} of answers open with '{DEMO_FORMAT}', ROUGE-L F1 to the demonstrations {mean:.3f}"}


def cmd_demo(args: argparse.Namespace) -> None:
    """Embedded model + bundled data: the student's answers scored before and after SDFT, per-step loss in between."""
    from .generation import generate_text
    from .demos import teacher_prompt
    from .driver import train
    from .trainer import Trainer

    start = time.perf_counter()
    examples = load_examples(SAMPLE_DATA)
    scored = examples[:args.prompts] if args.prompts else examples
    # The default preset (config.PRESETS: the 'system' template, lr 1e-3, skip_first 0, the base model as
    # teacher), measured on this sample over 3 seeds (docs/instruments.md, "The demo").
    config = Config().replace(steps=args.steps, batch_size=4, max_new_tokens=48, threads=args.threads,
                              save_every=args.steps, report_to="none")
    out = Path(args.out) if args.out else None
    trainer = Trainer(config, examples, out)
    model, tokenizer = trainer.model, trainer.tokenizer
    print(f"SDFT demo: {len(examples)} demonstrations in the form '{DEMO_FORMAT} <one sentence>.', {config.train.steps} "
          f"steps of SmolLM2-135M-Instruct ({config.model.model}); teacher: the base model with the demonstration in a "
          f"system message (--template {config.teacher.template}), lr {config.train.learning_rate:g}, skip_first "
          f"{config.loss.skip_first}. The student's greedy answers to {len(scored)} of the training prompts are "
          "scored before and after.\n", flush=True)
    before = demo_metrics(model, tokenizer, scored)
    probe = scored[:2]
    # What the student is pulled towards: the same model with the demonstration in context.
    teacher = generate_text(model, tokenizer, [teacher_prompt(tokenizer, ex, [ex.demonstration], config.teacher.template)
                                               for ex in probe], max_new_tokens=40)
    print(f"before: {before['summary']}\n", flush=True)
    train(trainer, echo=True)
    after = demo_metrics(model, tokenizer, scored)
    for ex, b, t, a in zip(probe, before["answers"], teacher, after["answers"]):
        print(f"\nQ: {ex.prompt}\n  demonstration: {ex.demonstration}\n  student before:    {b}\n"
              f"  teacher (+demo):   {t}\n  student after:     {a}")
    print(f"\nbefore: {before['summary']}\nafter:  {after['summary']}")
    moved = after["format"] > before["format"] or after["similarity"] > before["similarity"]
    print("The student moved towards the demonstrated answers." if moved else
          "The student did not move towards the demonstrated answers in this run: at 135M parameters and a few "
          "steps, what this shows is SDFT's mechanics (the loss and KL per step), not its gains.")
    print(f"\ndone in {time.perf_counter() - start:.0f} s" + (f"; run saved in {out}" if out else ""))


def cmd_generate(args: argparse.Namespace) -> None:
    from .generation import chat
    from .config import ModelConfig
    from .models import adapter_base, load_adapter, load_model

    if not args.chat and not args.prompt:
        raise ValueError("give --prompt TEXT, or --chat to talk in turns")
    if not args.adapter:
        model, tokenizer = load_model(args.model or "embedded", ModelConfig(model=args.model or "embedded"))
    else:
        adapter = Path(args.adapter)
        # A run's adapter/ or checkpoint/adapter: the run's config.yaml has the loading options (dtype, 4-bit).
        run = adapter.parent.parent if adapter.parent.name == "checkpoint" else adapter.parent
        options = Config.load(run / "config.yaml").model if (run / "config.yaml").is_file() else ModelConfig()
        # The base: --model, else the one the adapter records (so a moved or copied adapter finds it).
        base = args.model or adapter_base(adapter) or options.model
        model, tokenizer = load_adapter(adapter, dataclasses.replace(options, model=base))
    settings = {"system": args.system, "temperature": args.temperature, "repetition_penalty": args.repetition_penalty,
                "stop": args.stop or ()}
    if args.chat:
        _chat_in_terminal(model, tokenizer, args.prompt, args.max_new_tokens, settings)
    else:
        print(chat(model, tokenizer, args.prompt, args.max_new_tokens, **settings))


def _chat_in_terminal(model, tokenizer, first: str | None, max_new_tokens: int, settings: dict) -> None:
    """Multi-turn chat: each answer is printed as it is generated and kept in the conversation. A message
    that does not fit the model's context is refused in one line, and the chat goes on."""
    from .generation import TooLong, stream_chat

    print("Type a message and press Enter. /reset starts over; an empty line, /exit or Ctrl-D ends.", flush=True)
    messages: list[dict] = []
    while True:
        if first is not None:
            text, first = first, None
            print(f"you> {text}")
        else:
            try:
                text = input("you> ")
            except EOFError:
                print()
                return
        text = text.strip()
        if text in ("", "/exit"):
            return
        if text == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": text})
        answers = stream_chat(model, tokenizer, messages, max_new_tokens, **settings)
        try:
            answer = next(answers)  # the conversation is checked against the context before anything is generated
        except TooLong as err:
            messages.pop()
            print(f"error: {err} (this message was left out; /reset starts over)", file=sys.stderr, flush=True)
            continue
        except StopIteration:
            answer = ""
        print(f"model> {answer}", end="", flush=True)
        for grown in answers:
            print(grown[len(answer):], end="", flush=True)
            answer = grown
        print(flush=True)
        messages.append({"role": "assistant", "content": answer})


def cmd_check_teacher(args: argparse.Namespace) -> None:
    """Is the model a good teacher of itself on this data? Figures per template, then a verdict."""
    from .check import check_teacher
    from .config import TEMPLATES, ModelConfig
    from .models import load_model, set_threads

    templates = [name.strip() for name in args.templates.split(",") if name.strip()]
    unknown = [name for name in templates if name not in TEMPLATES]
    if unknown or not templates:
        raise ValueError(f"--templates takes names from {', '.join(TEMPLATES)}; got {args.templates!r}")
    examples = load_examples(args.data, columns=args.columns)  # bad data fails here, before any model is loaded
    set_threads(args.threads)
    model, tokenizer = load_model(args.model, ModelConfig(model=args.model))
    print(f"checking {args.model} as its own teacher on {min(args.n, len(examples))} of {len(examples)} records "
          f"from {args.data}, templates {', '.join(templates)}...", flush=True)
    check = check_teacher(model, tokenizer, examples, templates=templates, n=args.n,
                          max_new_tokens=args.max_new_tokens, scorer=None if args.scorer == "none" else args.scorer)
    print(check.table())
    if args.out:
        print(f"saved to {check.save(Path(args.out) / 'teacher_check.json')}")


def cmd_compare(args: argparse.Namespace) -> None:
    """Base vs SFT vs SDFT on one task and on the previous-skills probe; report.json + report.html."""
    from .experiments import COMPARE_DEFAULTS, compare
    from .tasks import Task, load_eval_items, load_task

    if bool(args.data) != bool(args.eval) or bool(args.task) == bool(args.data):
        raise ValueError("give either --task NAME or both --data FILE and --eval FILE")
    if args.task:
        task = load_task(args.task)
    else:  # bad files fail here, before any model is loaded
        task = Task(Path(args.data).stem, f"{args.data} / {args.eval}",
                    load_examples(args.data, columns=args.columns), load_eval_items(args.eval))
    config = build_config(args, COMPARE_DEFAULTS)
    if (Path(args.out) / "report.json").exists():
        raise FileExistsError(f"{args.out} already holds a report; choose another --out (nothing was overwritten)")
    compare(task, config, seeds=args.seeds, out_dir=args.out, eval_limit=args.eval_limit,
            eval_max_new_tokens=args.eval_max_new_tokens, progress=not args.quiet)
    print(f"reports written to {Path(args.out) / 'report.json'} and {Path(args.out) / 'report.html'}")


def cmd_continual(args: argparse.Namespace) -> None:
    """Sequential training on several bundled tasks, every task scored after every stage."""
    from .experiments import COMPARE_DEFAULTS, continual
    from .tasks import load_task

    tasks = [load_task(name.strip()) for name in args.tasks.split(",") if name.strip()]
    if len(tasks) < 2 or any(not t.train for t in tasks):
        raise ValueError("--tasks takes two or more bundled tasks with train data, e.g. knowledge,tooluse")
    config = build_config(args, COMPARE_DEFAULTS)
    continual(tasks, config, out_dir=args.out, eval_limit=args.eval_limit,
              eval_max_new_tokens=args.eval_max_new_tokens, progress=not args.quiet)
    print(f"reports written to {Path(args.out) / 'report.json'} and {Path(args.out) / 'report.html'}")


def _numbers(text: str, kind: type, flag_name: str) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{flag_name} takes comma-separated {kind.__name__} values, e.g. "
                         f"{'1e-3,3e-3' if kind is float else '10,30'}; got {text!r}")
    return values


def cmd_sweep(args: argparse.Namespace) -> None:
    """Every (method, learning rate, steps, seed) point trained and scored; report.json + report.html, resumable."""
    import json

    from .experiments import COMPARE_DEFAULTS
    from .sweep import format_sweep, sweep
    from .tasks import load_task

    if args.summary:
        report_path = Path(args.out) / "report.json"
        if not report_path.is_file():
            raise FileNotFoundError(f"{report_path}: no sweep report here yet")
        print(format_sweep(json.loads(report_path.read_text(encoding="utf-8")), markdown=args.markdown))
        return
    if not args.task or not args.learning_rates or not args.step_counts:
        raise ValueError("sweep needs --task, --learning-rates and --steps (or --summary to print a finished sweep)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    learning_rates = _numbers(args.learning_rates, float, "--learning-rates")
    steps = _numbers(args.step_counts, int, "--steps")
    task = load_task(args.task)
    config = build_config(args, COMPARE_DEFAULTS)
    try:
        sweep(task, config, methods=methods, learning_rates=learning_rates, steps=steps, seeds=args.seeds,
              out_dir=args.out, eval_limit=args.eval_limit, eval_max_new_tokens=args.eval_max_new_tokens,
              keep_adapters=args.keep_adapters, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted: the points scored so far are kept in {Path(args.out) / 'points.jsonl'}; run the same "
              "command again to continue", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"reports written to {Path(args.out) / 'report.json'} and {Path(args.out) / 'report.html'}")


def cmd_objectives(args: argparse.Namespace) -> None:
    """Forward KL / reverse KL / JSD x full / top-k / sampled token on one rollout: loss, gradient, cosine."""
    from .config import TEACHER_KINDS, TEMPLATES, ModelConfig
    from .models import add_lora, load_model, set_threads
    from .objectives import objectives_on_example

    examples = load_examples(args.data, columns=args.columns)  # bad data fails here, before any model is loaded
    if not 0 <= args.example < len(examples):
        raise ValueError(f"--example must be 0 to {len(examples) - 1} ({len(examples)} records in {args.data}); "
                         f"got {args.example}")
    if args.template not in TEMPLATES or args.teacher not in TEACHER_KINDS:
        raise ValueError(f"--template takes {', '.join(TEMPLATES)} and --teacher {', '.join(TEACHER_KINDS)}")
    set_threads(args.threads)
    model_config = ModelConfig(model=args.model)
    base, tokenizer = load_model(args.model, model_config)
    model = add_lora(base, model_config, seed=args.seed)
    example = examples[args.example]
    comparison, batch = objectives_on_example(model, tokenizer, example, template=args.template, teacher=args.teacher,
                                              max_new_tokens=args.max_new_tokens, topk=args.topk,
                                              skip_first=args.skip_first, seed=args.seed)
    print(f"Q: {example.prompt}\n  demonstration: {example.demonstration}\n  student rollout (temperature 1, seed "
          f"{args.seed}): {batch.texts(tokenizer)[0]}\n  teacher: '{args.teacher}', template '{args.template}'\n")
    print(comparison.table())
    if args.out:
        import json

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "objectives.json").write_text(json.dumps(comparison.to_dict(), indent=1), encoding="utf-8")
        comparison.figure().write_html(out / "objectives.html", include_plotlyjs=True)
        print(f"saved to {out / 'objectives.json'} and {out / 'objectives.html'}")


def _add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    """The flags compare, continual and sweep share: config file, eval size, progress."""
    parser.add_argument("--config", help="YAML with sections model/teacher/rollout/loss/train (replaces the "
                                         "compare defaults)")
    parser.add_argument("--eval-limit", type=int, help="score only the first N items of each eval set")
    parser.add_argument("--eval-max-new-tokens", type=int, default=48, help="longest greedy answer when scoring")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_inspect(args: argparse.Namespace) -> int:
    """The student's and the teacher's prompts of a few records as token streams, and every record's flags."""
    from transformers import AutoConfig

    from .inspector import inspect_prompts
    from .models import context_length, load_tokenizer, model_path

    config = build_config(args)
    examples = load_examples(args.data, columns=args.columns)  # bad data fails here, before any tokenizer is loaded
    print(f"{len(examples)} examples from {args.data}: {describe(examples, parse_columns(args.columns))}")
    tokenizer = load_tokenizer(config.model.model, config.model)
    hf_config = AutoConfig.from_pretrained(model_path(config.model.model),
                                           trust_remote_code=config.model.trust_remote_code)
    inspection = inspect_prompts(tokenizer, examples, config, context=context_length(hf_config))
    print(inspection.text(args.n))
    return 1 if inspection.errors else 0


def cmd_export(args: argparse.Namespace) -> None:
    """A run's adapter (with its model card) as a folder to share, base + adapter merged in 16-bit, or merged
    as GGUF with an Ollama Modelfile."""
    from .export import export_adapter, export_merged

    if args.format == "gguf":
        return _export_gguf(args)
    if args.merged or args.format == "merged":
        print(f"merging {args.run} into its base in {args.dtype}...", flush=True)
        out = export_merged(args.run, args.out, args.dtype)
    else:
        out = export_adapter(args.run, args.out)
    print(f"exported to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


def _export_gguf(args: argparse.Namespace) -> None:
    from .gguf_export import export_gguf

    types = tuple(t.strip() for t in args.quant.split(",") if t.strip())
    print(f"merging {args.run} into its base and writing GGUF ({', '.join(types)})...", flush=True)
    result = export_gguf(args.run, args.out, types, verify=args.verify)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for gguf_type, gap in result.gaps.items():
        print(f"verified model-{gguf_type}.gguf: loaded back with transformers' GGUF loader, largest next-token "
              f"log-prob difference to the merged model {gap:.2e}")
    print(f"exported to {result.folder}: " + ", ".join(sorted(p.name for p in result.folder.iterdir()))
          + f"\nwith Ollama: ollama create my-model -f {result.folder / 'Modelfile'} && ollama run my-model")


def cmd_push(args: argparse.Namespace) -> None:
    """Upload an adapter (or merged) folder to the Hugging Face Hub."""
    from .export import push

    print(f"pushed {args.adapter} to {push(args.adapter, args.repo, private=args.private)}")


DATA_HELP = ("demonstrations: a .jsonl/.json/.csv/.tsv/.parquet file, a save_to_disk folder or a Hub dataset id; "
             "records of prompt + demonstration, OpenAI messages, ShareGPT, Alpaca or the SDFT paper's files")


def _add_columns_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--columns", help="your column names for what sdft-kit reads, e.g. "
                                          "prompt=question,demonstration=answer (targets: prompt, demonstration, "
                                          "system, messages)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft-kit", description="Self-Distillation Fine-Tuning (SDFT) toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train with SDFT (or the SFT baseline) on your demonstrations")
    train.add_argument("--data", required=True, help=DATA_HELP)
    _add_columns_flag(train)
    train.add_argument("--out", required=True, help="run directory: a new or empty folder (or a run that has no "
                                                    "completed step), unless --resume")
    train.add_argument("--config", help="YAML with sections model/teacher/rollout/loss/train")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint "
                       f"(same data; of the settings only {', '.join(map(flag, RESUMABLE))} may change)")
    train.add_argument("--skip-check", action="store_true", help="skip the quick teacher check before SDFT training")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="a few SDFT steps on the embedded model and bundled data, the student's "
                                       "answers scored before and after")
    demo.add_argument("--steps", type=int, default=12)
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    demo.add_argument("--prompts", type=int, default=0, help="score the first N training prompts only (0: all 24)")
    demo.add_argument("--out", help="also save the run here")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="answer a prompt with a trained adapter (or the base model)")
    gen.add_argument("--adapter", help="adapter folder (a run's adapter/ or checkpoint/adapter)")
    gen.add_argument("--model", help="base model (default: the run's, else 'embedded')")
    gen.add_argument("--prompt", help="the message to answer (with --chat: the first turn)")
    gen.add_argument("--chat", action="store_true", help="talk in turns in the terminal; answers stream as they come")
    gen.add_argument("--system", help="optional system message")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--repetition-penalty", type=float, default=1.0,
                     help="> 1 discourages repeating tokens already in the conversation (1.0 = off; try 1.2 when "
                          "an answer loops)")
    gen.add_argument("--stop", action="append", metavar="TEXT",
                     help="end the answer before this text (repeat the flag for several)")
    gen.set_defaults(func=cmd_generate)

    check = sub.add_parser("check-teacher", help="is the model, shown a demonstration, a better answerer? (a minute)")
    check.add_argument("--data", required=True, help=DATA_HELP)
    _add_columns_flag(check)
    check.add_argument("--model", default="embedded", help="'embedded', a Hugging Face id or a local path")
    check.add_argument("--n", type=int, default=16, help="records to check (a seeded sample)")
    check.add_argument("--templates", default="paper,plain,system", help="comma-separated teacher templates to compare")
    check.add_argument("--max-new-tokens", type=int, default=48, help="length of the greedy answers sampled")
    check.add_argument("--scorer", choices=("none", "exact", "contains", "tool"), default="none",
                       help="judge answers by accuracy: 'exact' (= demonstration, up to case and spaces), 'contains' "
                            "(holds the demonstration), 'tool' (same Action and Action Input as the demonstration); "
                            "'none' (default): by ROUGE-L F1 to the demonstration")
    check.add_argument("--out", help="folder to write teacher_check.json to")
    check.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (1: fastest for a small model on a busy CPU; 0: torch's default)")
    check.set_defaults(func=cmd_check_teacher)

    inspect = sub.add_parser("inspect", help="the student's and teacher's prompts as token streams, and what could "
                                             "go wrong (too long, thinking or system-prompt mismatches, ...)")
    inspect.add_argument("--data", required=True, help=DATA_HELP)
    _add_columns_flag(inspect)
    inspect.add_argument("--config", help="YAML with sections model/teacher/rollout/loss/train")
    inspect.add_argument("--n", type=int, default=3, help="records to show token by token (all are checked)")
    _add_config_flags(inspect)
    inspect.set_defaults(func=cmd_inspect)

    for name, func, text in (("compare", cmd_compare, "base vs SFT vs SDFT on a task and on a previous-skills "
                                                       "probe; writes report.json and report.html"),
                             ("continual", cmd_continual, "sequential training on several tasks (SFT and SDFT); "
                                                           "retention matrices")):
        exp = sub.add_parser(name, help=text)
        if name == "compare":
            exp.add_argument("--task", help="bundled task: knowledge or tooluse")
            exp.add_argument("--data", help="training data, as for train (with --eval)")
            _add_columns_flag(exp)
            exp.add_argument("--eval", help="eval JSONL of {prompt, answers, kind} records (with --data)")
            exp.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+N-1; report mean ± std")
        else:
            exp.add_argument("--tasks", required=True, help="comma-separated bundled tasks, in training order")
        exp.add_argument("--out", required=True, help="report folder (must not hold a report yet)")
        _add_experiment_flags(exp)
        _add_config_flags(exp)
        exp.set_defaults(func=func)

    sw = sub.add_parser("sweep", help="SFT vs SDFT along a grid of learning rates and steps, over seeds: each "
                                      "method's Pareto frontier of new-task vs previous-skills score (resumable)")
    sw.add_argument("--task", help="bundled task: knowledge or tooluse")
    sw.add_argument("--methods", default="sft,sdft", help="comma-separated: sft, sdft")
    sw.add_argument("--learning-rates", help="comma-separated, e.g. 1e-3,3e-3,1e-2")
    # its own dest: `steps` would be read as the config field by build_config
    sw.add_argument("--steps", dest="step_counts", help="comma-separated step counts, e.g. 10,30")
    sw.add_argument("--seeds", type=int, default=3, help="seeds seed..seed+N-1 per point; mean ± std")
    sw.add_argument("--out", required=True, help="sweep folder: new, or one to continue (same settings)")
    _add_experiment_flags(sw)
    sw.add_argument("--keep-adapters", action="store_true", help="keep each point's adapter/ (about 20 MB each)")
    sw.add_argument("--summary", action="store_true", help="print the table of the sweep in --out, and exit")
    sw.add_argument("--markdown", action="store_true", help="with --summary: as a markdown table")
    _add_config_flags(sw, skip=("method", "learning_rate", "steps"))
    sw.set_defaults(func=cmd_sweep)

    obj = sub.add_parser("objectives", help="forward KL / reverse KL / JSD x full / top-k / sampled token on one "
                                            "rollout: loss, gradient norm, cosine to the paper's, tokens pushed")
    obj.add_argument("--data", default=str(SAMPLE_DATA), help=DATA_HELP)
    _add_columns_flag(obj)
    obj.add_argument("--example", type=int, default=0, help="which record (0-based)")
    obj.add_argument("--model", default="embedded", help="'embedded', a Hugging Face id or a local path")
    obj.add_argument("--template", default=Config().teacher.template, help="teacher template: system (the default "
                     "preset's), paper or plain")
    obj.add_argument("--teacher", default="base", help="teacher kind: base, ema, factor_ema or live (at step 0 all "
                                                       "agree)")
    obj.add_argument("--max-new-tokens", type=int, default=48, help="length of the student's rollout")
    obj.add_argument("--topk", type=int, default=100, help="k of the top-k objectives")
    obj.add_argument("--skip-first", type=int, default=Config().loss.skip_first,
                     help="completion tokens left out of every loss (the default preset's: 0; the paper's: 3)")
    obj.add_argument("--seed", type=int, default=0, help="seed of the rollout and the LoRA init")
    obj.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    obj.add_argument("--out", help="folder to write objectives.json and objectives.html to")
    obj.set_defaults(func=cmd_objectives)

    export = sub.add_parser("export", help="a run's adapter with its model card, the merged model in 16-bit, or "
                                           "the merged model as GGUF with an Ollama Modelfile")
    export.add_argument("--run", required=True, help="run directory (holds config.yaml and adapter/)")
    export.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    export.add_argument("--format", choices=("adapter", "merged", "gguf"), default="adapter",
                        help="adapter (PEFT, with its model card), merged (safetensors, --dtype) or gguf (llama.cpp / "
                             "Ollama: model-<quant>.gguf and a Modelfile)")
    export.add_argument("--merged", action="store_true", help="the same as --format merged")
    export.add_argument("--quant", default="q8_0", help="with --format gguf: f16, q8_0 or both (f16,q8_0)")
    export.add_argument("--verify", action="store_true",
                        help="with --format gguf: load each file back (transformers' GGUF loader) and print its "
                             "largest next-token log-prob difference to the merged model")
    export.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16",
                        help="weights of the merged model (a 4-bit run is merged into a 16-bit copy of its base)")
    export.set_defaults(func=cmd_export)

    push = sub.add_parser("push", help="upload an adapter (or export) folder to the Hugging Face Hub")
    push.add_argument("--adapter", required=True, help="folder: a run's adapter/ or an `sdft-kit export` folder")
    push.add_argument("--repo", required=True, help="model repo id, e.g. your-name/my-sdft-adapter (created if new)")
    push.add_argument("--public", dest="private", action="store_false",
                      help="create the repo public (default: private, as the app's push; a repo that exists keeps "
                           "its visibility)")
    push.set_defaults(func=cmd_push)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _process_rank() -> int:
    """This process's rank among the training processes (accelerate launch / torchrun set RANK); 0 alone."""
    return int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def _quiet():
    """What the command prints to stdout and stderr, dropped (a training process other than process 0)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _interrupted(args: argparse.Namespace) -> str:
    """What an interrupted command leaves, said truthfully: the checkpoint kept, if any."""
    if args.command != "train":
        return "interrupted"
    out = Path(args.out)
    newest = newest_checkpoint(out) if out.is_dir() else None
    if newest is not None:
        return f"interrupted: the checkpoint of step {newest[0]} is kept in {out} (continue with --resume)"
    if (out / "config.yaml").is_file():
        return f"interrupted before any checkpoint: no step is kept in {out} (--resume starts the run over)"
    return "interrupted; nothing was written"


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line each, without the source line
        rank = _process_rank()
        try:
            with _quiet() if rank else contextlib.nullcontext():
                return args.func(args) or 0
        except (DataError, ValueError, OSError, RuntimeError) as err:
            if os.environ.get("SDFT_KIT_DEBUG"):
                raise
            # Several processes (accelerate launch): process 0 speaks. Bad input (data, settings, files) is the
            # same in every process, so the others keep quiet about it; anything else may be theirs alone.
            if rank == 0:
                print(f"error: {err}", file=sys.stderr)
            elif not isinstance(err, (ValueError, OSError, NonFiniteSteps)):
                print(f"error (process {rank}): {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if rank == 0:
                print(_interrupted(args), file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
