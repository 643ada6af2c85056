"""The web app under a room's load: 20 pages on loopback poll while a run trains, and load the page again.

`python app.py` is started in its own process (one torch thread, as by default). One client loads the
bundled sample and starts an SFT run (the Train tab's defaults but method SFT and enough steps to outlast
the measurement); once its first step is done, `--clients` threads stand for open pages. Each, for
`--rounds` rounds a `--pause` apart (the page polls once a second):

    poll        the Train tab's once-a-second request (POST /gradio_api/run/poll: outside gradio's queue)
    page load   every `--reload-every` rounds (the first round too): GET / (the HTML, with the layout
                inline) and GET /config, what a browser fetches before it draws the app (its JS and CSS
                are static files, cached after the first visit)

timing each. `--idle` measures the same with nothing training. The figures (p50, p95, max, per kind),
the load average and the run's progress during the measurement go to benchmarks/results/
app_page_load.json (app_page_load_idle.json with --idle).

    python benchmarks/app_page_load.py                       # 20 pages x 30 rounds, a reload every 5th
    python benchmarks/app_page_load.py --idle                # the same with no run training
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
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(percentile(values, 0.5) * 1000, 1),
            "p95_ms": round(percentile(values, 0.95) * 1000, 1), "max_ms": round(max(values) * 1000, 1),
            "mean_ms": round(statistics.mean(values) * 1000, 1)}


def wait_for_server(url: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the app did not answer at {url} within {timeout} s")


def poll(client, session: str) -> float:
    """One poll as the page sends it: the poll runs outside gradio's queue, so one POST to gradio's run route
    (the page's session, its state input as null: the server holds it)."""
    start = time.perf_counter()
    client.post("gradio_api/run/poll", json={"data": [None, "log_ratio"], "session_hash": session}).raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--reload-every", type=int, default=5, help="rounds between a client's page loads")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between a client's rounds")
    parser.add_argument("--idle", action="store_true", help="no run trains during the measurement")
    parser.add_argument("--out", help="default: benchmarks/results/app_page_load.json (_idle.json with --idle)")
    args = parser.parse_args()
    args.out = args.out or str(ROOT / f"benchmarks/results/app_page_load{'_idle' if args.idle else ''}.json")

    import httpx
    from gradio_client import Client, handle_file

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as runs:
        server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--runs-dir", runs],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_server(url)
            trainer = Client(url, verbose=False)
            names = [p["label"] for p in trainer.view_api(return_format="dict", print_info=False)
                     ["named_endpoints"]["/start"]["parameters"]]
            defaults = [p["parameter_default"] for p in trainer.view_api(return_format="dict", print_info=False)
                        ["named_endpoints"]["/start"]["parameters"]]
            values = dict(zip(names, defaults))
            values.update({"Method": "sft", "Steps": 200})
            trainer.predict(handle_file(str(ROOT / "sdft_kit/samples/demo.jsonl")), *values.values(),
                            api_name="/load_data")
            step_before = 0
            if not args.idle:
                started = trainer.predict(*values.values(), api_name="/start")[0]
                assert "Started" in started, started
                while not re.search(r"step [1-9]\d*/", status := trainer.predict("log_ratio", api_name="/poll")[1]):
                    assert "failed" not in status, status
                    time.sleep(1)
                step_before = int(re.search(r"step (\d+)/", status)[1])
            load_before = os.getloadavg()
            pages, polls, errors = [], [], []
            lock = threading.Lock()

            def visitor() -> None:
                session = uuid.uuid4().hex
                with httpx.Client(base_url=url, timeout=120) as client:  # keeps its cookie, as a browser does
                    for number in range(args.rounds):
                        try:
                            if number % args.reload_every == 0:
                                start = time.perf_counter()
                                client.get("").raise_for_status()
                                client.get("config").raise_for_status()
                                with lock:
                                    pages.append(time.perf_counter() - start)
                            polled = poll(client, session)
                            with lock:
                                polls.append(polled)
                        except httpx.HTTPError as err:
                            with lock:
                                errors.append(repr(err))
                        time.sleep(args.pause)

            began = time.perf_counter()
            threads = [threading.Thread(target=visitor) for _ in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.perf_counter() - began
            load_after = os.getloadavg()
            status = trainer.predict("log_ratio", api_name="/poll")[1]
            step_after = int(re.search(r"step (\d+)/", status)[1]) if not args.idle else 0
            trainer.predict(api_name="/stop")
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {"clients": args.clients, "rounds": args.rounds, "reload_every": args.reload_every,
              "pause_s": args.pause, "idle": args.idle, "seconds": round(seconds, 1),
              "page_load": summary(pages), "poll": summary(polls), "errors": errors,
              "training": None if args.idle else {"steps_before": step_before, "steps_after": step_after,
                                                  "status_after": status.split("\n\n")[0]},
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in load_after],
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(["python", *sys.argv])}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("page_load", "poll", "training", "load_average_after")}, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
