"""Wall time of each notebook run top to bottom with its default parameters (`make notebook-times`).

Each notebook is executed headless with papermill in a fresh temporary folder (its runs land
there), one after another, and the times go to benchmarks/results/notebook_times.json. Run it on
an otherwise idle machine: the notebooks use torch's default thread count.

    python benchmarks/notebook_times.py                  # all notebooks
    python benchmarks/notebook_times.py 01 03            # those whose name starts so
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import papermill

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="notebook name prefixes (default: all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/notebook_times.json"))
    args = parser.parse_args()
    notebooks = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
                 if not args.only or any(p.name.startswith(prefix) for prefix in args.only)]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("notebooks", {})
    results.update(machine=f"{platform.machine()}, {os.cpu_count()} cores", parameters="defaults")
    for path in notebooks:
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            papermill.execute_notebook(str(path), str(Path(work) / path.name), cwd=work, kernel_name="python3",
                                       progress_bar=False)
            seconds = time.perf_counter() - start
        results["notebooks"][path.stem] = {"wall_s": round(seconds, 1), "date": time.strftime("%Y-%m-%d")}
        print(f"{path.stem:32} {seconds / 60:5.1f} min", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
