"""`sdft-kit` command line: train, demo, generate, check-teacher, compare, continual, export, push.

Every config field is a flag of `train` (`--lora-r 8`, `--teacher base`); a flag
overrides the YAML given with --config, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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


def build_config(args: argparse.Namespace, defaults: dict | None = None) -> Config:
    """The run's config: --config's YAML, else the defaults (with `defaults` applied); then every flag given."""
    config = Config.load(args.config) if args.config else Config().replace(**(defaults or {}))
    overrides = {name: getattr(args, name) for _, f in fields_by_section() if hasattr(args, name := f.name)}
    return config.replace(**overrides)


def _step_line(record: dict) -> str:
    kl = "" if record["mean_kl"] is None else f"  mean KL {record['mean_kl']:.4f}"
    s = record["seconds"]
    return (f"step {record['step']:>3}/{record['steps']}  loss {record['loss']:.4f}{kl}  "
            f"tokens {record['tokens']:>4}  {s['total']:.1f}s  peak {record['peak_mem_mb']:.0f} MB")


def _print_step(record: dict) -> None:
    print(_step_line(record), flush=True)


def _train_with_bar(trainer, tracker) -> None:
    """Train, printing one line per step on stdout (for people and scripts) under a tqdm bar with
    elapsed < remaining on stderr, and logging each record to the tracker."""
    from tqdm.auto import tqdm

    steps = trainer.config.train.steps
    with tqdm(total=steps, initial=trainer.step, desc=trainer.config.train.method.upper(), unit="step",
              file=sys.stderr, dynamic_ncols=True) as bar:
        for record in tracker.track(trainer.steps()):
            bar.write(_step_line(record), file=sys.stdout)  # above the bar; stdout keeps one line per step
            sys.stdout.flush()
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            bar.update(1)


def cmd_train(args: argparse.Namespace) -> None:
    from .export import name_real_base, write_model_card
    from .tracking import open_tracker, require_tracker
    from .trainer import Trainer

    out = Path(args.out)
    if args.resume:
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"{out}: not a run directory (config.yaml is missing); nothing to resume")
        config = Config.load(out / "config.yaml")
        if "steps" in args:
            config = config.replace(steps=args.steps)
    else:
        config = build_config(args)
    examples = load_examples(args.data)  # bad data fails here, before any model is loaded
    print(f"{len(examples)} examples from {args.data}; method {config.train.method}, model {config.model.model}")
    require_tracker(config.train.report_to)  # a missing tracker package fails here too, before the model loads
    trainer = Trainer(config, examples, out, resume=args.resume)
    if config.train.method == "sdft" and not args.resume and not args.skip_check:
        from .check import quick_check

        # A few seconds' look at whether the model can teach itself on this data.
        check = quick_check(trainer)
        print(check.summary() + f" (saved to {out / 'teacher_check.json'}; skip with --skip-check)\n", flush=True)
    with open_tracker(config, out, resume=args.resume) as tracker:
        _train_with_bar(trainer, tracker)
    name_real_base(out / "adapter" / "adapter_config.json")
    card = write_model_card(out, examples=len(examples))
    print(f"adapter saved to {out / 'adapter'} (model card: {card.name}); step records in {out / 'metrics.jsonl'}")


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
    from .config import ModelConfig
    from .chat import chat
    from .models import load_adapter, load_model

    run_config = Path(args.adapter).parent / "config.yaml" if args.adapter else None
    if run_config is not None and run_config.is_file() and args.model is None:
        model_config = Config.load(run_config).model
    else:
        model_config = ModelConfig(model=args.model or "embedded")
    if args.adapter:
        model, tokenizer = load_adapter(args.adapter, model_config)
    else:
        model, tokenizer = load_model(model_config.model, model_config)
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


def cmd_export(args: argparse.Namespace) -> None:
    """A run's adapter (with its model card) as a folder to share, or base + adapter merged in 16-bit."""
    from .export import export_adapter, export_merged

    if args.merged:
        print(f"merging {args.run} into its base in {args.dtype}...", flush=True)
        out = export_merged(args.run, args.out, args.dtype)
    else:
        out = export_adapter(args.run, args.out)
    print(f"exported to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


def cmd_push(args: argparse.Namespace) -> None:
    """Upload an adapter (or merged) folder to the Hugging Face Hub."""
    from .export import push

    print(f"pushed {args.adapter} to {push(args.adapter, args.repo, private=args.private)}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft-kit", description="Self-Distillation Fine-Tuning (SDFT) toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train with SDFT (or the SFT baseline) on your demonstrations")
    train.add_argument("--data", required=True, help="JSONL or CSV of {prompt, demonstration} records")
    train.add_argument("--out", required=True, help="run directory (must be new, unless --resume)")
    train.add_argument("--config", help="YAML with sections model/teacher/rollout/loss/train")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
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
    export = sub.add_parser("export", help="a run's adapter with its model card, or the merged model in 16-bit")
    export.add_argument("--run", required=True, help="run directory (holds config.yaml and adapter/)")
    export.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    export.add_argument("--merged", action="store_true", help="merge the adapter into its base (safetensors)")
    export.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16",
                        help="weights of the merged model (a 4-bit run is merged into a 16-bit copy of its base)")
    export.set_defaults(func=cmd_export)

    push = sub.add_parser("push", help="upload an adapter (or export) folder to the Hugging Face Hub")
    push.add_argument("--adapter", required=True, help="folder: a run's adapter/ or an `sdft-kit export` folder")
    push.add_argument("--repo", required=True, help="model repo id, e.g. your-name/my-sdft-adapter (created if new)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, ValueError, OSError, RuntimeError) as err:
        if os.environ.get("SDFT_KIT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
