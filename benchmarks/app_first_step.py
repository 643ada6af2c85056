"""The web app's time to first step: Start clicked on the bundled sample until the status shows step 1.

Each repeat launches the app in a fresh process (as `python app.py` does), loads the bundled
demo.jsonl over HTTP with gradio_client, clicks Start with the Train tab's default settings (the
'workshop' preset on a CPU: the measured default in 12-step runs) and polls the status line (as the
page does) four times a second, noting when each phase begins: loading the model, the teacher check
(SDFT only: every named template compared, 8 records), training, step 1 done. Then it stops the run.
The repeats run one after the other, nothing else in between. The figures, with the machine's load
average before each run, go to benchmarks/results/app_first_step.json.

    python benchmarks/app_first_step.py                  # 3 repeats, default settings (SDFT)
    python benchmarks/app_first_step.py --method sft     # the SFT baseline (no teacher check, no rollout)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(method: str) -> dict:
    """In this (fresh) process: serve the app, Start once, return when each phase began (seconds after Start)."""
    import importlib.util

    from gradio_client import Client, handle_file

    spec = importlib.util.spec_from_file_location("sdft_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    app.set_threads(1)  # what `python app.py` does (--threads 1 by default)
    with tempfile.TemporaryDirectory() as runs:
        demo = app.build(runs, threads=1)
        with socket.socket() as free:  # a port nobody uses
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        _, url, _ = app.launch(demo, port=port, prevent_thread_lock=True, quiet=True)
        client = Client(url, verbose=False)
        settings = {"preset": demo.page.preset.value,
                    **{name: component.value for name, component in demo.page.settings.items()}}
        settings["method"] = method
        client.predict(handle_file(str(ROOT / "sdft_kit/samples/demo.jsonl")), *settings.values(),
                       api_name="/load_data")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        message, _ = client.predict(*settings.values(), api_name="/start")
        assert message.startswith("Started"), message
        phases: dict[str, float] = {}
        while "first_step" not in phases:
            status = client.predict("log_ratio", api_name="/poll")[1].split("\n\n")[0]
            now = round(time.perf_counter() - start, 2)
            assert "failed" not in status, status
            for key, pattern in (("loading", "loading the model"), ("checking", "checking the teacher"),
                                 ("training", r"step \d+/\d+, elapsed"), ("first_step", "step 1/")):
                if re.search(pattern, status):
                    phases.setdefault(key, now)
            time.sleep(0.25)
        client.predict(api_name="/stop")
        demo.page.trainings.wait(timeout=600)
        app.close_app(demo)
    return {"settings": settings, "phases": phases, "load_average_1min": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", choices=("sdft", "sft"), default="sdft")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single run, in this process
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/app_first_step.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.method)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = []
    for repeat in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--one", "--method", args.method], capture_output=True,
                             text=True, env=env, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"run {repeat + 1}: {runs[-1]['phases']}", flush=True)
    firsts = [run["phases"]["first_step"] for run in runs]
    result = {"method": args.method, "repeats": args.repeats, "first_step_s": {
                  "median": statistics.median(firsts), "min": min(firsts), "max": max(firsts)},
              "runs": runs, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv])}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"time to first step ({args.method}): median {result['first_step_s']['median']:.1f} s "
          f"(min {min(firsts):.1f}, max {max(firsts):.1f}) over {args.repeats} runs; written to {args.out}")


if __name__ == "__main__":
    main()
