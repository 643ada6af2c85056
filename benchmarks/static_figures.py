"""What the static PNG copy of a notebook figure costs (kaleido driving Chromium), per kind of figure.

    python benchmarks/static_figures.py                 # 5 rounds
    python benchmarks/static_figures.py --rounds 3
    python benchmarks/static_figures.py --notebook 01   # a notebook end to end, PNGs on and off

The parent trains 3 steps of the embedded model (48-token rollouts, 1 thread) to get real step
records, then starts one fresh process per round. Each process times its first PNG (the browser's
start included: what a notebook pays once per kernel), then one PNG of every kind of figure the
notebooks draw, in turn, and the dashboard's final picture (three renders and the sheet they are
stacked on). Medians with min-max over the rounds go to benchmarks/results/static_figures.json.

`--notebook PREFIX` instead runs that notebook top to bottom with the tests' small parameters
(`--parameters`), with SDFT_KIT_STATIC_FIGURES=1 and =0 in alternating order over `--rounds`
rounds, and records both wall times and the executed notebook's size under "notebook_ab".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["token_strip", "token_detail", "curves", "token_change", "retention_matrix", "compare_scores"]


def figures(records: list[dict]) -> dict:
    from sdft_kit import views

    last = records[-1]
    report = {"task": "tooluse", "seeds": [0], "table": {
        m: {"new_task": {"mean": a, "std": 0.0}, "previous_skills": {"mean": b, "std": 0.0}}
        for m, a, b in (("base", 0.0, 1.0), ("sft", 0.4, 0.87), ("sdft", 0.1, 0.9))}}
    return {
        "token_strip": views.token_strip(last),
        "token_detail": views.token_detail(last, views.loudest_token(last, "kl")),
        "curves": views.curves(records),
        "token_change": views.token_change(records[-1], records[-1]),
        "retention_matrix": views.retention_matrix(["knowledge", "tooluse", "probe"],
                                                   [[0.0, 0.0, 1.0], [0.3, 0.0, 0.9], [0.2, 0.5, 0.8]]),
        "compare_scores": views.compare_scores(report),
    }


def child(records_path: str) -> None:
    """One round in a fresh process: the cold first PNG, then every kind warm, then the dashboard's picture."""
    from sdft_kit.figure_output import stack_png, static_png

    records = json.loads(Path(records_path).read_text())
    figs = figures(records)
    out = {"seconds": {}, "bytes": {}}
    start = time.perf_counter()
    first = static_png(figs["curves"])
    out["cold_first_png_s"] = time.perf_counter() - start
    if first is None:
        raise SystemExit("no PNG: kaleido or a browser is missing (see the line above)")
    for kind in KINDS:
        start = time.perf_counter()
        png = static_png(figs[kind])
        out["seconds"][kind] = time.perf_counter() - start
        out["bytes"][kind] = len(png)
    start = time.perf_counter()
    sheet = stack_png([figs["curves"], figs["token_strip"], figs["token_detail"]], "dashboard at the end")
    out["seconds"]["dashboard_picture"] = time.perf_counter() - start
    out["bytes"]["dashboard_picture"] = len(sheet)
    print(json.dumps(out))


def train_records() -> list[dict]:
    from sdft_kit import SAMPLE_DATA, Config, Trainer, load_examples

    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(Config().replace(steps=3, batch_size=2, max_new_tokens=48, threads=1, report_to="none"),
                          load_examples(SAMPLE_DATA), Path(work) / "run")
        return list(trainer.steps())


def notebook_ab(prefix: str, parameters: dict, rounds: int) -> dict:
    """Wall time and executed size of one notebook with the static PNGs on and off, interleaved."""
    import papermill

    path = next((ROOT / "notebooks").glob(f"{prefix}*.ipynb"))
    runs = {"on": [], "off": []}
    sizes = {}
    for i in range(rounds):
        for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
            os.environ["SDFT_KIT_STATIC_FIGURES"] = "1" if mode == "on" else "0"
            with tempfile.TemporaryDirectory() as work:
                start = time.perf_counter()
                papermill.execute_notebook(str(path), f"{work}/{path.name}", parameters=parameters, cwd=work,
                                           kernel_name="python3", progress_bar=False)
                runs[mode].append(round(time.perf_counter() - start, 1))
                sizes[mode] = os.path.getsize(f"{work}/{path.name}")
            print(f"{mode}: {runs[mode][-1]} s, {sizes[mode] / 2**20:.2f} MB", flush=True)
    return {"notebook": path.stem, "parameters": parameters, "wall_s": runs,
            "executed_mb": {mode: round(size / 2**20, 2) for mode, size in sizes.items()}}


def spread(values: list[float], digits: int = 2) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--notebook", help="a notebook name prefix: time it with the PNGs on and off")
    parser.add_argument("--parameters", default='{"MAX_NEW_TOKENS": 16, "THREADS": 1}',
                        help="papermill parameters for --notebook (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/static_figures.json"))
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    if args.notebook:
        result = json.loads(out.read_text()) if out.is_file() else {}
        result["notebook_ab"] = {**notebook_ab(args.notebook, json.loads(args.parameters), args.rounds),
                                 "date": time.strftime("%Y-%m-%d"),
                                 "command": f"python benchmarks/static_figures.py --notebook {args.notebook} "
                                            f"--rounds {args.rounds}"}
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["notebook_ab"], indent=1))
        return
    records = train_records()
    rounds = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(records, file)
    try:
        for i in range(args.rounds):
            done = subprocess.run([sys.executable, __file__, "--child", file.name], check=True, capture_output=True,
                                  text=True)
            rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {i + 1}: first PNG {rounds[-1]['cold_first_png_s']:.2f} s, then "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in rounds[-1]["seconds"].items()), flush=True)
    finally:
        os.unlink(file.name)
    from importlib.metadata import version

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "browser": subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip()
        if any((Path(p) / "chromium").exists() for p in os.environ.get("PATH", "").split(os.pathsep)) else "?",
        "kaleido": version("kaleido"), "plotly": version("plotly"),
        "rounds": args.rounds, "record_tokens": len(records[-1]["sample"]["tokens"]),
        "cold_first_png_s": spread([r["cold_first_png_s"] for r in rounds]),
        "png_s": {k: spread([r["seconds"][k] for r in rounds]) for k in rounds[0]["seconds"]},
        "png_kb": {k: round(statistics.median([r["bytes"][k] for r in rounds]) / 1024, 1) for k in rounds[0]["bytes"]},
        "command": "python benchmarks/static_figures.py --rounds " + str(args.rounds),
    }
    if out.is_file() and "notebook_ab" in json.loads(out.read_text()):
        result["notebook_ab"] = json.loads(out.read_text())["notebook_ab"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
