"""The SFT-vs-SDFT trade-off along a sweep: new-task score against previous-skills score.

    sweep(task, config, methods=("sft", "sdft"), learning_rates=[...], steps=[...], seeds=3, out_dir=...)

One learning rate per method (as `compare` runs) mixes forgetting with how far each method
moved. The paper compares the methods along the trade-off instead: every point of a grid
(method x learning rate x steps x seed) is trained from the same base model and scored on the
new task and on the previous-skills probe; each method's Pareto frontier is the set of its
points that no other point of the same method (or the untrained base) beats on both scores.

Resumable point by point: each finished point is appended to `points.jsonl` as soon as it is
scored, so a killed sweep continues where it stopped when the same command runs again
(finished points are read back; a point cut off mid-training is trained again from its start).
The grid may grow between runs (points already scored are kept); the other settings may not.

out_dir holds sweep.json (the settings), base.json (the base model's scores), points.jsonl,
runs/<point>/ (metrics.jsonl and config.yaml of each training run; adapters only with
keep_adapters) and report.json + report.html, rewritten after every point.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .config import Config
from .experiments import (PROBE, fresh_model, html_page, html_table, mean_std, plus_minus, score_items,
                          train_run)
from .tasks import Task, load_task

# Fields a point sets itself; every other config field must match to resume a sweep folder
# (threads and save_every change no result).
POINT_FIELDS = ("method", "learning_rate", "steps", "seed", "threads", "save_every")
SWEEP_METHODS = ("sft", "sdft")


def point_name(method: str, learning_rate: float, steps: int, seed: int) -> str:
    return f"{method}-lr{learning_rate:g}-steps{steps}-seed{seed}"


def _settings(task: Task, config: Config, eval_limit: int | None, eval_max_new_tokens: int) -> dict:
    """What must match for points to be comparable (and a folder to be resumed)."""
    data = config.to_dict()
    for section in data.values():
        for name in POINT_FIELDS:
            section.pop(name, None)
    return {"task": task.name, "n_train": len(task.train), "eval_limit": eval_limit,
            "eval_max_new_tokens": eval_max_new_tokens, "config": data}


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a kill mid-write leaves the previous file."""
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(staging, path)


def read_points(path: Path, log: Callable[[str], None] = print) -> list[dict]:
    """The finished points of a sweep folder's points.jsonl; a last line cut off by a kill is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    points = []
    for number, line in enumerate(lines, start=1):
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise ValueError(f"{path}, line {number}: not JSON; the sweep's record is damaged") from None
            log(f"{path}: dropping its last line, cut off mid-write; that point is trained again")
            path.write_text("".join(line + "\n" for line in lines[:-1]), encoding="utf-8")
    return points


def _open_folder(out: Path, settings: dict) -> None:
    """Start a sweep folder, or check that the one there was made with the same settings."""
    saved = out / "sweep.json"
    if saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        if before != settings:
            changed = sorted(k for k in settings if settings[k] != before.get(k))
            raise ValueError(f"{out} holds a sweep with other settings ({', '.join(changed)} differ); resume it with "
                             "the same task, config and eval flags, or choose another --out (nothing was changed)")
        return
    if (out / "report.json").exists():
        raise FileExistsError(f"{out} already holds another report; choose another --out (nothing was overwritten)")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    _write_json(saved, settings)


def sweep(task: str | Task, config: Config, *, methods: tuple[str, ...] | list[str] = SWEEP_METHODS,
          learning_rates: list[float], steps: list[int], seeds: int = 3, out_dir: str | Path,
          eval_limit: int | None = None, eval_max_new_tokens: int = 48, keep_adapters: bool = False,
          progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train and score every (method, learning rate, steps, seed) point not yet in out_dir; returns the report.

    Seeds are config.train.seed, +1, ... Every point starts from the same base model with a fresh
    LoRA adapter (seeded), as `compare` does; the rest of the config is shared by all points.
    """
    from tqdm.auto import tqdm

    task = load_task(task) if isinstance(task, str) else task
    bad = [m for m in methods if m not in SWEEP_METHODS]
    if bad or not methods or not learning_rates or not steps or seeds < 1:
        raise ValueError(f"a sweep needs methods from {', '.join(SWEEP_METHODS)}, at least one learning rate and one "
                         f"step count, and seeds >= 1; got methods {list(methods)}, learning rates {learning_rates}, "
                         f"steps {steps}, seeds {seeds}")
    if any(lr <= 0 for lr in learning_rates) or any(s < 1 for s in steps):
        raise ValueError(f"learning rates must be > 0 and steps >= 1; got {learning_rates} and {steps}")
    if not task.train or not task.eval:
        raise ValueError(f"task {task.name!r} needs train examples and eval items")
    out = Path(out_dir)
    _open_folder(out, _settings(task, config, eval_limit, eval_max_new_tokens))
    new_items, probe_items = task.eval[:eval_limit], load_task(PROBE).eval[:eval_limit]

    def score_both(model, tokenizer) -> dict:
        return {"new_task": score_items(model, tokenizer, new_items, eval_max_new_tokens, progress),
                "previous_skills": score_items(model, tokenizer, probe_items, eval_max_new_tokens, progress)}

    if not (out / "base.json").exists():
        model, tokenizer = fresh_model(config, config.train.seed)
        start = time.perf_counter()
        base = score_both(model, tokenizer)
        _write_json(out / "base.json", {key: {"accuracy": value["accuracy"], "accuracy_by_group":
                                              value["accuracy_by_group"]} for key, value in base.items()}
                    | {"eval_s": round(time.perf_counter() - start, 1)})
    base = json.loads((out / "base.json").read_text(encoding="utf-8"))
    seed_list = list(range(config.train.seed, config.train.seed + seeds))
    grid = [(m, lr, s, seed) for seed in seed_list for m in methods for lr in learning_rates for s in steps]
    done = {point_name(p["method"], p["learning_rate"], p["steps"], p["seed"]) for p in read_points(out / "points.jsonl",
                                                                                                    log)}
    todo = [point for point in grid if point_name(*point) not in done]
    log(f"sweep on {task.name}: {len(grid)} points ({len(grid) - len(todo)} already scored), "
        f"{len(new_items)} eval items, {len(probe_items)} probe items")
    bar = tqdm(total=len(grid), initial=len(grid) - len(todo), desc="sweep points", unit="point", disable=not progress)
    for method, learning_rate, step_count, seed in todo:
        name = point_name(method, learning_rate, step_count, seed)
        run_dir = out / "runs" / name
        if run_dir.exists():  # cut off before it was scored: train it again from its start
            shutil.rmtree(run_dir)
        model, tokenizer = fresh_model(config, seed)
        point_config = config.replace(method=method, learning_rate=learning_rate, steps=step_count, seed=seed,
                                      save_every=step_count)
        records, train_s = train_run(point_config, task, run_dir, model, tokenizer, progress)
        start = time.perf_counter()
        scores = score_both(model, tokenizer)
        eval_s = time.perf_counter() - start
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # resuming is per point: optimizer state not needed
        if not keep_adapters:
            shutil.rmtree(run_dir / "adapter", ignore_errors=True)
        point = {"method": method, "learning_rate": learning_rate, "steps": step_count, "seed": seed, "run_dir": name,
                 "new_task": scores["new_task"]["accuracy"],
                 "new_task_by_group": scores["new_task"]["accuracy_by_group"],
                 "previous_skills": scores["previous_skills"]["accuracy"],
                 "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                 "step_s": round(sum(r["seconds"]["total"] for r in records) / len(records), 2),
                 "tokens": sum(r["tokens"] for r in records), "final_loss": records[-1]["loss"]}
        with open(out / "points.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
            f.flush()
            os.fsync(f.fileno())
        bar.update(1)
        log(f"{name}: new task {point['new_task']:.3f}, previous skills {point['previous_skills']:.3f} "
            f"(train {train_s:.0f} s, eval {eval_s:.0f} s)")
        write_report(out, grid)  # a report to look at while the sweep goes on
    bar.close()
    report = write_report(out, grid)
    log(format_sweep(report))
    return report


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both scores (>= on both, > on one), by rising first score."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(a >= x and b >= y and (a > x or b > y) for a, b in points)]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def summarize_points(base: dict, points: list[dict]) -> list[dict]:
    """One row per (method, learning rate, steps): mean ± std over seeds, and whether it is on its method's frontier.

    The base model (no training) takes part in every method's frontier: a point that learns
    nothing and forgets is beaten by not training at all.
    """
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], p["learning_rate"], p["steps"]), []).append(p)
    rows = [{"method": method, "learning_rate": lr, "steps": steps, "seeds": sorted(p["seed"] for p in mine),
             "new_task": mean_std([p["new_task"] for p in mine]),
             "previous_skills": mean_std([p["previous_skills"] for p in mine]),
             "train_s": mean_std([p["train_s"] for p in mine]), "step_s": mean_std([p["step_s"] for p in mine]),
             "eval_s": mean_std([p["eval_s"] for p in mine])}
            for (method, lr, steps), mine in sorted(groups.items())]
    origin = (base["new_task"]["accuracy"], base["previous_skills"]["accuracy"])
    for method in {r["method"] for r in rows}:
        mine = [r for r in rows if r["method"] == method]
        front = pareto_front([origin] + [(r["new_task"]["mean"], r["previous_skills"]["mean"]) for r in mine])
        for i, row in enumerate(mine, start=1):
            row["frontier"] = i in front
    return rows


def write_report(out: Path, grid: list[tuple] | None = None) -> dict:
    """report.json and report.html from a sweep folder's points (those of `grid`, default all of them)."""
    settings = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    base = json.loads((out / "base.json").read_text(encoding="utf-8"))
    points = read_points(out / "points.jsonl")
    if grid is not None:
        wanted = {point_name(*point) for point in grid}
        points = [p for p in points if point_name(p["method"], p["learning_rate"], p["steps"], p["seed"]) in wanted]
    report = {"kind": "sweep", "task": settings["task"], "base": base, "rows": summarize_points(base, points),
              "points": points, "grid_points": len(grid) if grid is not None else len(points),
              "settings": settings, "config": settings["config"],
              "notes": ["Each point trains from the same base model with a fresh LoRA adapter; mean ± std over seeds.",
                        "A method's Pareto frontier: its points (and the untrained base) that no other of them beats "
                        "on both scores."]}
    _write_json(out / "report.json", report)
    body = html_table(*sweep_table_rows(report)) + f"<pre>{html.escape(frontier_lines(report))}</pre>"
    (out / "report.html").write_text(html_page(f"sdft-kit sweep: {report['task']}", body, [pareto_figure(report)],
                                               report["notes"], report["config"]), encoding="utf-8")
    return report


def sweep_table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the sweep table as text (scores in %, mean ± std over seeds; * = on the frontier)."""
    header = ["method", "learning rate", "steps", "seeds", f"new task ({report['task']}) %", "previous skills %",
              "frontier", "train s", "eval s"]
    base = report["base"]
    rows = [["base", "", "0", "", f"{base['new_task']['accuracy'] * 100:.1f}",
             f"{base['previous_skills']['accuracy'] * 100:.1f}", "*", "", ""]]
    rows += [[r["method"].upper(), f"{r['learning_rate']:g}", str(r["steps"]), str(len(r["seeds"])),
              plus_minus(r["new_task"]), plus_minus(r["previous_skills"]), "*" if r["frontier"] else "",
              plus_minus(r["train_s"], 1, 0), plus_minus(r["eval_s"], 1, 0)] for r in report["rows"]]
    return header, rows


def format_sweep(report: dict, markdown: bool = False) -> str:
    """The sweep table (plain text, or a markdown table for the README), then each method's frontier."""
    header, rows = sweep_table_rows(report)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines) + "\n\n" + frontier_lines(report)


def frontier_lines(report: dict) -> str:
    """Each method's frontier points (new task %, previous skills %), and how much of the grid is scored."""
    lines = []
    for method in sorted({r["method"] for r in report["rows"]}):
        front = [r for r in report["rows"] if r["method"] == method and r["frontier"]]
        lines.append(f"{method.upper()} frontier: " + (", ".join(
            f"lr {r['learning_rate']:g} x {r['steps']} steps ({r['new_task']['mean'] * 100:.1f}, "
            f"{r['previous_skills']['mean'] * 100:.1f})" for r in front) or "the base model alone"))
    points = report["points"]
    lines.append(f"{len(points)} of {report['grid_points']} points scored; "
                 f"{sum(p['train_s'] for p in points) / 60:.0f} min training, "
                 f"{sum(p['eval_s'] for p in points) / 60:.0f} min evaluating")
    return "\n".join(lines)


def pareto_figure(report: dict):
    """New-task score (x) vs previous-skills score (y): every (method, lr, steps) with ± std bars, each frontier."""
    import plotly.graph_objects as go

    colours = {"sft": "#d62728", "sdft": "#1f77b4"}
    base = report["base"]
    origin = (base["new_task"]["accuracy"] * 100, base["previous_skills"]["accuracy"] * 100)
    fig = go.Figure(go.Scatter(x=[origin[0]], y=[origin[1]], mode="markers", name="base",
                               marker={"symbol": "star", "size": 14, "color": "black"}))
    for method in sorted({r["method"] for r in report["rows"]}):
        mine = [r for r in report["rows"] if r["method"] == method]
        colour = colours.get(method, "#555")
        fig.add_scatter(x=[r["new_task"]["mean"] * 100 for r in mine], y=[r["previous_skills"]["mean"] * 100 for r in mine],
                        error_x={"array": [r["new_task"]["std"] * 100 for r in mine]},
                        error_y={"array": [r["previous_skills"]["std"] * 100 for r in mine]},
                        mode="markers", name=method.upper(), marker={"color": colour, "size": 9},
                        text=[f"lr {r['learning_rate']:g}, {r['steps']} steps, {len(r['seeds'])} seeds" for r in mine],
                        hovertemplate="%{text}<br>new task %{x:.1f}%, previous skills %{y:.1f}%<extra></extra>")
        front = [origin] + [(r["new_task"]["mean"] * 100, r["previous_skills"]["mean"] * 100) for r in mine
                            if r["frontier"]]
        front = [front[i] for i in pareto_front(front)]
        fig.add_scatter(x=[x for x, _ in front], y=[y for _, y in front], mode="lines", name=f"{method.upper()} frontier",
                        line={"color": colour})
    fig.update_layout(title=f"{report['task']}: new task vs previous skills (mean ± std over seeds)",
                      xaxis_title="new task score %", yaxis_title="previous skills score %", height=520)
    return fig
