"""`sdft-kit` command line: train, demo, generate, check-teacher, compare, continual.

Every config field is a flag of `train` (`--lora-r 8`, `--teacher base`); a flag
overrides the YAML given with --config, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from .checkpoint import RESUMABLE, newest_checkpoint
from .config import Config, fields_by_section, flag
from .data import SAMPLE_DATA, DataError, load_examples


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for section, f in fields_by_section():
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"[{section}] {f.metadata['help']}"}
        if isinstance(f.default, bool) or f.default is None:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(f.default)
        parser.add_argument(flag(f.name), **kwargs)


def build_config(args: argparse.Namespace, defaults: dict | None = None, base: Config | None = None) -> Config:
    """The run's config: --config's YAML, else `base` (a resumed run's), else the defaults (with `defaults`
    applied); then every flag given."""
    config = Config.load(args.config) if args.config else base or Config().replace(**(defaults or {}))
    overrides = {name: getattr(args, name) for _, f in fields_by_section() if hasattr(args, name := f.name)}
    return config.replace(**overrides)


def _print_step(record: dict) -> None:
    kl = "" if record["mean_kl"] is None else f"  mean KL {record['mean_kl']:.4f}"
    s = record["seconds"]
    print(f"step {record['step']:>3}/{record['steps']}  loss {record['loss']:.4f}{kl}  "
          f"tokens {record['tokens']:>4}  {s['total']:.1f}s  peak {record['peak_mem_mb']:.0f} MB", flush=True)


@contextlib.contextmanager
def _stop_on_ctrl_c(trainer) -> Iterator[None]:
    """Ctrl-C (or SIGTERM) once: finish the step under way, checkpoint it and stop. Twice: quit at once."""
    def on_signal(signum, frame) -> None:
        print("\nstopping after this step, with a checkpoint (Ctrl-C again quits at once)", file=sys.stderr, flush=True)
        trainer.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    out = Path(args.out)
    saved = None
    if args.resume:
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"{out}: not a run directory (config.yaml is missing); nothing to resume")
        saved = Config.load(out / "config.yaml")  # flags change it where a resumed run allows (Trainer checks)
    config = build_config(args, base=saved)
    examples = load_examples(args.data)  # bad data fails here, before any model is loaded
    print(f"{len(examples)} examples from {args.data}; method {config.train.method}, model {config.model.model}")
    trainer = Trainer(config, examples, out, resume=args.resume)  # checks and locks --out before the model loads
    if args.resume:
        print(f"resuming at step {trainer.step}" + ("" if trainer.step else " (no checkpoint yet: from the start)"))
    if config.train.method == "sdft" and not args.resume and not args.skip_check:
        from .check import quick_check

        # A few seconds' look at whether the model can teach itself on this data.
        check = quick_check(trainer)
        print(check.summary() + f" (saved to {out / 'teacher_check.json'}; skip with --skip-check)\n", flush=True)
    with _stop_on_ctrl_c(trainer):
        for record in trainer.steps():
            _print_step(record)
    if trainer.step < config.train.steps:  # stopped by Ctrl-C
        kept = (f"the checkpoint of step {trainer.saved_step} is in {out / 'checkpoint'}; continue with --resume"
                if trainer.saved_step else "no step was completed, so nothing is kept")
        print(f"stopped after step {trainer.step}/{config.train.steps}: {kept}", file=sys.stderr)
        return 130
    print(f"adapter saved to {out / 'adapter'}; step records in {out / 'metrics.jsonl'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> None:
    """Embedded model + bundled data: per-step loss and a before/after answer."""
    from .chat import generate_text
    from .demos import student_prompt, teacher_prompt
    from .trainer import Trainer

    start = time.perf_counter()
    examples = load_examples(SAMPLE_DATA)
    config = Config().replace(steps=args.steps, batch_size=4, max_new_tokens=48, learning_rate=1e-3,
                              teacher="base", threads=args.threads, save_every=args.steps)
    out = Path(args.out) if args.out else None
    trainer = Trainer(config, examples, out)
    probe = examples[:2]
    prompts = [student_prompt(trainer.tokenizer, ex) for ex in probe]
    before = generate_text(trainer.model, trainer.tokenizer, prompts, max_new_tokens=40)
    # What the student is pulled towards: the same model with the demonstration in context.
    teacher = generate_text(trainer.model, trainer.tokenizer,
                            [teacher_prompt(trainer.tokenizer, ex, [ex.demonstration]) for ex in probe],
                            max_new_tokens=40)
    print(f"SDFT demo: {len(examples)} demonstrations in the form 'Answer: <one sentence>.', "
          f"{config.train.steps} steps on {config.model.model} (SmolLM2-135M-Instruct)\n")
    for record in trainer.steps():
        _print_step(record)
    after = generate_text(trainer.model, trainer.tokenizer, prompts, max_new_tokens=40)
    for ex, b, t, a in zip(probe, before, teacher, after):
        print(f"\nQ: {ex.prompt}\n  demonstration: {ex.demonstration}\n  student before:    {b}\n"
              f"  teacher (+demo):   {t}\n  student after:     {a}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s" + (f"; run saved in {out}" if out else ""))


def cmd_generate(args: argparse.Namespace) -> None:
    from .chat import chat
    from .config import ModelConfig
    from .models import adapter_base, load_adapter, load_model

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
    print(chat(model, tokenizer, args.prompt, args.max_new_tokens, system=args.system, temperature=args.temperature))


def cmd_check_teacher(args: argparse.Namespace) -> None:
    """Is the model a good teacher of itself on this data? Figures per template, then a verdict."""
    from .check import check_teacher
    from .config import TEMPLATES, ModelConfig
    from .models import load_model, set_threads

    templates = [name.strip() for name in args.templates.split(",") if name.strip()]
    unknown = [name for name in templates if name not in TEMPLATES]
    if unknown or not templates:
        raise ValueError(f"--templates takes names from {', '.join(TEMPLATES)}; got {args.templates!r}")
    examples = load_examples(args.data)  # bad data fails here, before any model is loaded
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
        task = Task(Path(args.data).stem, f"{args.data} / {args.eval}", load_examples(args.data),
                    load_eval_items(args.eval))
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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft-kit", description="Self-Distillation Fine-Tuning (SDFT) toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train with SDFT (or the SFT baseline) on your demonstrations")
    train.add_argument("--data", required=True, help="JSONL or CSV of {prompt, demonstration} records")
    train.add_argument("--out", required=True, help="run directory: a new or empty folder (or a run that has no "
                                                    "completed step), unless --resume")
    train.add_argument("--config", help="YAML with sections model/teacher/rollout/loss/train")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint "
                       f"(same data; of the settings only {', '.join(map(flag, RESUMABLE))} may change)")
    train.add_argument("--skip-check", action="store_true", help="skip the quick teacher check before SDFT training")
    _add_config_flags(train)
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="a few SDFT steps on the embedded model and bundled data")
    demo.add_argument("--steps", type=int, default=12)
    demo.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    demo.add_argument("--out", help="also save the run here")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="answer a prompt with a trained adapter (or the base model)")
    gen.add_argument("--adapter", help="adapter folder (a run's adapter/ or checkpoint/adapter)")
    gen.add_argument("--model", help="base model (default: the run's, else 'embedded')")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--system", help="optional system message")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.set_defaults(func=cmd_generate)

    check = sub.add_parser("check-teacher", help="is the model, shown a demonstration, a better answerer? (a minute)")
    check.add_argument("--data", required=True, help="JSONL or CSV of {prompt, demonstration} records")
    check.add_argument("--model", default="embedded", help="'embedded', a Hugging Face id or a local path")
    check.add_argument("--n", type=int, default=16, help="records to check (a seeded sample)")
    check.add_argument("--templates", default="paper,plain,system", help="comma-separated teacher templates to compare")
    check.add_argument("--max-new-tokens", type=int, default=48, help="length of the greedy answers sampled")
    check.add_argument("--scorer", choices=("none", "exact", "contains"), default="none",
                       help="answer accuracy: 'exact' (= demonstration, up to case and spaces), 'contains' "
                            "(holds the demonstration) or 'none'")
    check.add_argument("--out", help="folder to write teacher_check.json to")
    check.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (1: fastest for a small model on a busy CPU; 0: torch's default)")
    check.set_defaults(func=cmd_check_teacher)

    for name, func, text in (("compare", cmd_compare, "base vs SFT vs SDFT on a task and on a previous-skills "
                                                       "probe; writes report.json and report.html"),
                             ("continual", cmd_continual, "sequential training on several tasks (SFT and SDFT); "
                                                           "retention matrices")):
        exp = sub.add_parser(name, help=text)
        if name == "compare":
            exp.add_argument("--task", help="bundled task: knowledge or tooluse")
            exp.add_argument("--data", help="train JSONL/CSV of {prompt, demonstration} (with --eval)")
            exp.add_argument("--eval", help="eval JSONL of {prompt, answers, kind} records (with --data)")
            exp.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+N-1; report mean ± std")
        else:
            exp.add_argument("--tasks", required=True, help="comma-separated bundled tasks, in training order")
        exp.add_argument("--out", required=True, help="report folder (must not hold a report yet)")
        exp.add_argument("--config", help="YAML with sections model/teacher/rollout/loss/train (replaces the "
                                          "compare defaults)")
        exp.add_argument("--eval-limit", type=int, help="score only the first N items of each eval set")
        exp.add_argument("--eval-max-new-tokens", type=int, default=48, help="longest greedy answer when scoring")
        exp.add_argument("--quiet", action="store_true", help="no progress bars")
        _add_config_flags(exp)
        exp.set_defaults(func=func)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


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
        try:
            return args.func(args) or 0
        except (DataError, ValueError, OSError, RuntimeError) as err:
            if os.environ.get("SDFT_KIT_DEBUG"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(_interrupted(args), file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
