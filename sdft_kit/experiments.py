"""Experiments: SDFT vs SFT on a task, and sequential (continual) training.

    compare(task, config, seeds=N)   base, SFT and SDFT from the same base model, seed and step budget,
                                     each scored on the new task and on the previous-skills probe
    continual(tasks, config)         train on tasks one after another, scoring every task after each stage

Each writes `report.json` and a self-contained `report.html` (plotly inlined, no network) in
`out_dir`, next to the normal run directories (metrics.jsonl, adapter/) of every training run.
The greedy base model is deterministic and a fresh LoRA adapter starts as a no-op, so the
base model is evaluated once and shared by all seeds and methods.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from .config import Config
from .evaluate import EvalItem, evaluate
from .records import StepRecord
from .tasks import TASKS, Task, load_task

METHODS = ("sft", "sdft")
# What `sdft-kit compare` / `continual` run unless told otherwise (the rest: Config's defaults).
# Sized so `sdft-kit compare --task knowledge` runs in under 20 minutes on 2 CPU cores with the
# embedded model (SDFT ~10 s a step there, SFT ~3 s, evals ~1-2 min each). lr 3e-3: with 1e-3
# and 30 steps SFT learned 1 of 56 knowledge answers; with 3e-3 and 40 steps, 8.
COMPARE_DEFAULTS = {"steps": 40, "batch_size": 4, "max_new_tokens": 40, "learning_rate": 3e-3, "threads": 1,
                    "save_every": 1000}
PROBE = "skills_probe"


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for a single value) of a list of numbers."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def fresh_model(config: Config, seed: int):
    """A fresh base model with a fresh LoRA adapter: every method starts from the same weights."""
    from .models import add_lora, load_model, set_threads

    set_threads(config.train.threads)  # before any evaluation, not only inside the Trainer
    base, tokenizer = load_model(config.model.model, config.model)
    return add_lora(base, config.model, seed=seed), tokenizer


def score_items(model, tokenizer, items: list[EvalItem], max_new_tokens: int, progress: bool) -> dict:
    """`evaluate` on the items, as a JSON-ready dict (accuracy, by group, per-item outputs)."""
    return evaluate(model, tokenizer, items, max_new_tokens=max_new_tokens, progress=progress).to_dict()


def _new_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if (out / "report.json").exists() or (out / "report.html").exists():
        raise FileExistsError(f"{out} already holds a report; choose another --out (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_run(config: Config, task: Task, run_dir: Path, model, tokenizer, progress: bool) -> tuple[list[StepRecord], float]:
    """Train `model` on the task's train split into `run_dir`; returns the step records and the seconds taken."""
    from .driver import train
    from .trainer import Trainer

    if config.monitor.monitor_every and config.monitor.monitor_new_task == "holdout" and task.name in TASKS:
        config = config.replace(monitor_new_task=task.name)  # the forgetting monitor scores the task's eval split
    start = time.perf_counter()
    trainer = Trainer(config, task.train, run_dir, model=model, tokenizer=tokenizer)
    outcome = train(trainer, progress=progress, tracker_name=f"{run_dir.parent.name}-{run_dir.name}")
    return outcome.records, time.perf_counter() - start


def compare(task: str | Task, config: Config, *, seeds: int = 1, out_dir: str | Path, eval_limit: int | None = None,
            eval_max_new_tokens: int = 48, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Base vs SFT vs SDFT on `task` (a bundled name or a Task) and on the previous-skills probe.

    Seeds are config.train.seed, +1, ... Returns the report (also written to out_dir/report.json).
    """
    task = load_task(task) if isinstance(task, str) else task
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    if not task.train or not task.eval:
        raise ValueError(f"task {task.name!r} needs train examples and eval items")
    out = _new_out_dir(out_dir)
    start = time.perf_counter()
    new_items, probe_items = task.eval[:eval_limit], load_task(PROBE).eval[:eval_limit]
    phases = {"base_eval": 0.0, "train": 0.0, "eval": 0.0}

    def score_both(model, tokenizer) -> dict:
        return {"new_task": score_items(model, tokenizer, new_items, eval_max_new_tokens, progress),
                "previous_skills": score_items(model, tokenizer, probe_items, eval_max_new_tokens, progress)}

    log(f"compare on {task.name}: {len(task.train)} train examples, {len(new_items)} eval items, "
        f"{len(probe_items)} probe items; {config.train.steps} steps x batch {config.train.batch_size}, seeds {seeds}")
    model, tokenizer = fresh_model(config, config.train.seed)
    t0 = time.perf_counter()
    base = score_both(model, tokenizer)
    phases["base_eval"] = time.perf_counter() - t0
    log(f"base: new task {base['new_task']['accuracy']:.3f}, previous skills {base['previous_skills']['accuracy']:.3f} "
        f"({phases['base_eval']:.0f} s)")
    runs = []
    for seed in range(config.train.seed, config.train.seed + seeds):
        for method in METHODS:
            run_dir = out / f"{method}-seed{seed}"
            model, tokenizer = fresh_model(config, seed)
            records, train_s = train_run(config.replace(method=method, seed=seed), task, run_dir, model, tokenizer,
                                      progress)
            t0 = time.perf_counter()
            scores = score_both(model, tokenizer)
            eval_s = time.perf_counter() - t0
            phases["train"] += train_s
            phases["eval"] += eval_s
            runs.append({
                "method": method, "seed": seed, "run_dir": run_dir.name,
                "new_task": scores["new_task"]["accuracy"],
                "new_task_by_group": scores["new_task"]["accuracy_by_group"],
                "previous_skills": scores["previous_skills"]["accuracy"],
                "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                "tokens": sum(r["tokens"] for r in records),
                "peak_mem_mb": max(r["peak_mem_mb"] for r in records),
                "final_loss": records[-1]["loss"], "eval": scores,
            })
            log(f"{method} seed {seed}: new task {runs[-1]['new_task']:.3f}, previous skills "
                f"{runs[-1]['previous_skills']:.3f} (train {train_s:.0f} s, eval {eval_s:.0f} s)")
    report = {
        "kind": "compare", "task": task.name, "description": task.description,
        "seeds": list(range(config.train.seed, config.train.seed + seeds)),
        "n_eval": len(new_items), "n_probe": len(probe_items), "eval_max_new_tokens": eval_max_new_tokens,
        "table": summarize(base, runs), "runs": runs, "base_eval": base,
        "wall_s": round(time.perf_counter() - start, 1), "phase_s": {k: round(v, 1) for k, v in phases.items()},
        "config": config.to_dict(),
        "notes": ["The base model is evaluated once: greedy decoding and log-likelihood scoring are deterministic "
                  "and a fresh LoRA adapter is a no-op.",
                  "peak_mem_mb is max allocated memory on CUDA; on CPU it is the process's peak RSS so far, so it "
                  "never falls from one method to the next (SFT runs first)."],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    write_html(report, out / "report.html", {f"{r['method']} seed {r['seed']}": out / r["run_dir"] for r in runs})
    log(format_table(report))
    return report


def side_by_side(report: dict, part: str = "new_task", seed: int | None = None) -> list[dict]:
    """Each question of a compare report with the base, SFT and SDFT answers (of one seed, default the first).

    part: 'new_task' or 'previous_skills'. A row: prompt, group, accepted answers, then per method
    its output and whether it was scored right."""
    seed = report["seeds"][0] if seed is None else seed
    sources = {"base": report["base_eval"][part]}
    sources.update({r["method"]: r["eval"][part] for r in report["runs"] if r["seed"] == seed})
    rows = []
    for i, item in enumerate(sources["base"]["items"]):
        row = {"prompt": item["prompt"], "group": item["group"], "answers": " | ".join(item["answers"])}
        for method, result in sources.items():
            name = method if method == "base" else method.upper()
            row[name] = result["items"][i]["output"]
            row[f"{name} right"] = result["items"][i]["correct"]
        rows.append(row)
    return rows


def summarize(base: dict, runs: list[dict]) -> dict:
    """The paper-shaped table: per method, mean/std over seeds and the change from base (method - base)."""
    table = {"base": {"new_task": mean_std([base["new_task"]["accuracy"]]),
                      "previous_skills": mean_std([base["previous_skills"]["accuracy"]]),
                      "new_task_by_group": base["new_task"]["accuracy_by_group"]}}
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row = {key: mean_std([r[key] for r in mine])
               for key in ("new_task", "previous_skills", "train_s", "tokens", "peak_mem_mb")}
        groups = sorted({g for r in mine for g in r["new_task_by_group"]})
        row["new_task_by_group"] = {g: mean_std([r["new_task_by_group"][g] for r in mine])["mean"] for g in groups}
        row["change"] = {key: row[key]["mean"] - table["base"][key]["mean"] for key in ("new_task", "previous_skills")}
        table[method] = row
    return table


def plus_minus(stat: dict, scale: float = 100.0, digits: int = 1) -> str:
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['std'] * scale:.{digits}f}" if stat["n"] > 1 else "")


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the compare table as text (scores in %, change in points)."""
    header = ["method", f"new task ({report['task']}) %", "previous skills %", "Δ new task", "Δ prev. skills",
              "train s", "tokens", "peak MB"]
    rows = []
    for method, row in report["table"].items():
        if method == "base":
            rows.append(["base", plus_minus(row["new_task"]), plus_minus(row["previous_skills"]), "", "", "", "", ""])
            continue
        rows.append([method.upper(), plus_minus(row["new_task"]), plus_minus(row["previous_skills"]),
                     f"{row['change']['new_task'] * 100:+.1f}", f"{row['change']['previous_skills'] * 100:+.1f}",
                     plus_minus(row["train_s"], 1, 0), plus_minus(row["tokens"], 1, 0), plus_minus(row["peak_mem_mb"], 1, 0)])
    return header, rows


def format_table(report: dict) -> str:
    header, rows = table_rows(report)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    groups = {m: row["new_task_by_group"] for m, row in report["table"].items() if row.get("new_task_by_group")}
    if any(len(g) > 1 for g in groups.values()):
        lines.append("new task by group: " + "; ".join(
            f"{m}: " + ", ".join(f"{g} {v * 100:.1f}" for g, v in sorted(gs.items())) for m, gs in groups.items()))
    lines.append(f"seeds {report['seeds']}; wall {report['wall_s']:.0f} s (phases: "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in report["phase_s"].items()) + ")")
    return "\n".join(lines)


def continual(tasks: list[str | Task], config: Config, *, out_dir: str | Path, eval_limit: int | None = None,
              eval_max_new_tokens: int = 48, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train on the tasks in order (SFT, then separately SDFT), scoring every task (and the probe) after each stage.

    The retention matrix of a method has rows base, after task 1, after task 2, ... and one
    column per task plus the previous-skills probe.
    """
    tasks = [load_task(t) if isinstance(t, str) else t for t in tasks]
    out = _new_out_dir(out_dir)
    start = time.perf_counter()
    columns = {t.name: t.eval[:eval_limit] for t in tasks}
    columns[PROBE] = load_task(PROBE).eval[:eval_limit]

    def score_all(model, tokenizer) -> list[float]:
        return [score_items(model, tokenizer, items, eval_max_new_tokens, progress)["accuracy"]
                for items in columns.values()]

    model, tokenizer = fresh_model(config, config.train.seed)
    base_row = score_all(model, tokenizer)
    log("base: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(columns, base_row)))
    matrices, run_dirs = {}, {}
    for method in METHODS:
        model, tokenizer = fresh_model(config, config.train.seed)
        rows = [base_row]
        for i, task in enumerate(tasks):
            run_dir = out / f"{method}-{i + 1}-{task.name}"
            records, _ = train_run(config.replace(method=method), task, run_dir, model, tokenizer, progress)
            rows.append(score_all(model, tokenizer))
            run_dirs[f"{method} {task.name}"] = run_dir
            log(f"{method} after {task.name}: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(columns, rows[-1])))
        matrices[method] = rows
    report = {
        "kind": "continual", "tasks": [t.name for t in tasks], "columns": list(columns),
        "stages": ["base"] + [f"after {t.name}" for t in tasks], "matrices": matrices,
        "n_eval": {name: len(items) for name, items in columns.items()}, "eval_max_new_tokens": eval_max_new_tokens,
        "wall_s": round(time.perf_counter() - start, 1), "config": config.to_dict(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    write_html(report, out / "report.html", run_dirs)
    log(format_matrices(report))
    return report


def format_matrices(report: dict) -> str:
    lines = []
    for method, rows in report["matrices"].items():
        width = max(len(s) for s in report["stages"])
        lines.append(f"{method.upper()} (score %)".ljust(width) + "  "
                     + "  ".join(c.rjust(12) for c in report["columns"]))
        for stage, row in zip(report["stages"], rows):
            lines.append(stage.ljust(width) + "  " + "  ".join(f"{v * 100:12.1f}" for v in row))
    lines.append(f"wall {report['wall_s']:.0f} s")
    return "\n".join(lines)


def write_html(report: dict, path: Path, run_dirs: dict[str, Path]) -> Path:
    """report.html: the table (or retention matrices) and the training curves, plotly inlined."""
    from .records import load_records
    from .views import curves, retention_matrix

    figures = []
    if report["kind"] == "compare":
        header, rows = table_rows(report)
        body = html_table(header, rows)
        body += "<pre>" + html.escape(format_table(report).split("\n", len(rows) + 1)[-1]) + "</pre>"
        firsts = [name for name in run_dirs if name.endswith(f"seed {report['seeds'][0]}")]
        figures.append(curves(*[load_records(run_dirs[n]) for n in firsts], names=firsts))
    else:
        body = f"<pre>{html.escape(format_matrices(report))}</pre>"
        for method, rows in report["matrices"].items():
            fig = retention_matrix(report["columns"], rows, report["stages"])
            fig.update_layout(title=f"{method.upper()}: score on each task after each stage")
            figures.append(fig)
        figures.append(curves(*[load_records(d) for d in run_dirs.values()], names=list(run_dirs)))
    title = f"sdft-kit {report['kind']}: " + (report.get("task") or ", ".join(report["tasks"]))
    path.write_text(html_page(title, body, figures, report.get("notes", []), report["config"]), encoding="utf-8")
    return path


def html_page(title: str, body: str, figures: list, notes: list[str], config: dict) -> str:
    """A self-contained report page: title, body html, notes, plotly figures (plotly.js inlined) and the config."""
    from plotly.offline import get_plotlyjs

    notes_html = "".join(f"<p class='hint'>{html.escape(n)}</p>" for n in notes)
    plots = "".join(fig.to_html(full_html=False, include_plotlyjs=False) for fig in figures)
    title = html.escape(title)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:16px 24px} td,th{padding:4px 10px;"
            "border-bottom:1px solid #ddd;text-align:right} .hint{color:#666;font-size:14px}</style>"
            f"<script>{get_plotlyjs()}</script></head><body><h2>{title}</h2>{body}{notes_html}{plots}"
            f"<details><summary>config</summary><pre>{html.escape(json.dumps(config, indent=1))}</pre>"
            "</details></body></html>")


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An html table of text cells (escaped)."""
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")
