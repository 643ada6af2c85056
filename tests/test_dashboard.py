import base64
import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbformat.v4 import new_code_cell, new_notebook
from test_views import make_record

from sdft_kit.dashboard import Dashboard
from sdft_kit.figure_output import PLOTLY_MIME, STATIC_SCALE, STATIC_WIDTH, png_size
from sdft_kit.views import display_token, escaped

REPO = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def test_update_changes_widget_state_on_each_new_record():
    dash = Dashboard()
    assert dash.position.disabled and dash.position.max == 0 and not dash.figures

    first = make_record(step=1, loss=0.8, values=[0.1, 0.2, 0.3, 0.9, 0.2, 0.1])
    dash.update(first)
    assert "step 1/3" in dash.status.value and "loss 0.8000" in dash.status.value
    assert not dash.position.disabled and dash.position.max == 5
    assert dash.position.value == 0  # the largest |log p_teacher/p_student|: log(0.2/0.9) at #0
    assert [v for _, v in dash.metric.options] == ["log_ratio", "kl", "student_prob", "entropy_gap"]
    assert list(dash.figures["curves"].data[0].x) == [1] and list(dash.figures["curves"].data[0].y) == [0.8]
    assert list(dash.figures["strip"].data[0].text) == [escaped(display_token(t)) for t in first["sample"]["tokens"]]

    second = make_record(step=2, loss=0.6, tokens=("A", " longer", " answer", " with", " more", " words", " here", "!"))
    dash.update(second)
    assert "step 2/3" in dash.status.value and dash.position.max == 7
    assert list(dash.figures["curves"].data[0].x) == [1, 2] and list(dash.figures["curves"].data[0].y) == [0.8, 0.6]
    assert list(dash.figures["strip"].data[0].text) == [escaped(display_token(t)) for t in second["sample"]["tokens"]]

    dash.metric.value = "kl"  # the dropdown recolours the strip by the record's per-token KL
    assert dash.figures["strip"].data[0].marker.colorbar.title.text.startswith("per-token KL")
    assert list(dash.figures["strip"].data[0].marker.color)[:3] == pytest.approx(second["sample"]["values"][:3])
    dash.position.value = 6  # the slider moves the detail and the outline
    assert dash.figures["detail"].layout.title.text.startswith("token #6")
    assert list(dash.figures["detail"].data[0].x) == [p for _, p in second["sample"]["student_topk"][6]]
    assert dash.figures["strip"].layout.shapes[0].x0 < dash.figures["strip"].data[0].base[6]

    dash.update(make_record(step=3, method="sft", tokens=("Answer", ":", " 12")))
    assert [v for _, v in dash.metric.options] == ["nll", "student_prob"] and dash.metric.value == "nll"
    assert dash.position.max == 2 and len(dash.figures["detail"].data) == 1  # student only

    dash.update({"step": 4, "steps": 4, "method": "sdft", "loss": 0.5, "mean_kl": 0.4})  # no sample
    assert dash.position.disabled and "no sample" in dash.figures["strip"].layout.annotations[0].text
    assert list(dash.figures["curves"].data[0].x) == [1, 2, 3, 4]


def test_dashboard_replots_a_finished_run_next_to_a_baseline():
    sdft = [make_record(step=s, loss=1.0 / s) for s in (1, 2, 3)]
    sft = [make_record(step=s, method="sft", loss=2.0 / s) for s in (1, 2, 3)]
    dash = Dashboard(records=sdft, compare=sft)
    names = {trace.name for trace in dash.figures["curves"].data}
    assert {"SDFT", "SFT", "SDFT loss", "SFT loss"} <= names and "step 3/3" in dash.status.value


class RecordingClient(NotebookClient):
    """Executes a notebook headless and keeps every plotly figure the kernel displays, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.figures = []

    def process_message(self, msg, cell, cell_index):
        if msg["msg_type"] == "display_data" and PLOTLY_MIME in msg["content"]["data"]:
            self.figures.append(msg["content"]["data"][PLOTLY_MIME])
        return super().process_message(msg, cell, cell_index)


SETUP = """\
import json
from sdft_kit import Config, Trainer, load_examples
from sdft_kit import SAMPLE_DATA
from sdft_kit.dashboard import Dashboard

# one torch thread: on a busy 2-core machine, two threads wait on each other far longer
trainer = Trainer(Config().replace(steps=2, batch_size=2, max_new_tokens=8, threads=1), load_examples(SAMPLE_DATA))
dash = Dashboard()
display(dash.widget)
"""

TRAIN = """\
for record in trainer.steps():
    dash.update(record)
    print("STATE", json.dumps({
        "step": record["step"], "loss": record["loss"], "tokens": record["sample"]["tokens"],
        "slider_max": dash.position.max, "slider_value": dash.position.value, "status": dash.status.value,
        "metrics": [value for _, value in dash.metric.options]}))
ids = {name: view.model_id for name, view in dash.views.items()}
print("IDS", json.dumps({**ids, "slider": dash.position.model_id, "status": dash.status.model_id}))
"""


def test_dashboard_updates_at_every_step_of_a_training_run_in_a_notebook():
    notebook = new_notebook(cells=[new_code_cell(SETUP), new_code_cell(TRAIN)])
    client = RecordingClient(notebook, timeout=600, kernel_name="python3", store_widget_state=True,
                             resources={"metadata": {"path": str(REPO)}})
    client.execute()

    # The setup cell shows the widget; a library may print to stderr before it (a stream output), so look it up.
    widget_views = [out["data"][WIDGET_MIME] for out in notebook.cells[0].outputs if WIDGET_MIME in out.get("data", {})]
    assert len(widget_views) == 1 and widget_views[0]["model_id"], notebook.cells[0].outputs
    printed = "".join(out.get("text", "") for out in notebook.cells[0].outputs if out.output_type == "stream")
    assert "kernels-community" not in printed and "Failed to load" not in printed, printed  # issue 24
    lines = "".join(out.get("text", "") for out in notebook.cells[1].outputs if out.output_type == "stream")
    states = [json.loads(line[len("STATE "):]) for line in lines.splitlines() if line.startswith("STATE ")]
    ids = json.loads(lines.split("IDS ", 1)[1].splitlines()[0])
    assert [s["step"] for s in states] == [1, 2]
    for state in states:  # the controls follow each step's rollout
        assert f"step {state['step']}/2" in state["status"]
        assert state["slider_max"] == len(state["tokens"]) - 1 and 0 <= state["slider_value"] <= state["slider_max"]
        assert state["metrics"] == ["log_ratio", "kl", "student_prob", "entropy_gap"]

    # Three figures reach the front end at every step: the strip, the detail, the curves.
    assert len(client.figures) == 6
    for step, state in enumerate(states, start=1):
        strip, detail, grown = client.figures[3 * step - 3: 3 * step]
        assert strip["data"][0]["text"] == [escaped(display_token(t)) for t in state["tokens"]]
        assert detail["layout"]["title"]["text"].startswith(f"token #{state['slider_value']}:")
        assert grown["data"][0]["x"] == list(range(1, step + 1))
        assert grown["data"][0]["y"][-1] == pytest.approx(state["loss"])

    # The saved widget state (what a reopened notebook shows) holds the last step.
    widgets = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    curves_output = widgets[ids["curves"]]["state"]["outputs"]
    assert len(curves_output) == 1 and curves_output[0]["data"][PLOTLY_MIME]["data"][0]["x"] == [1, 2]
    strip_output = widgets[ids["strip"]]["state"]["outputs"][0]["data"][PLOTLY_MIME]
    assert strip_output["data"][0]["text"] == [escaped(display_token(t)) for t in states[-1]["tokens"]]
    assert widgets[ids["slider"]]["state"]["max"] == states[-1]["slider_max"]
    assert "step 2/2" in widgets[ids["status"]]["state"]["value"]
    nbformat.validate(notebook)


def test_the_status_line_shows_elapsed_and_remaining_time():
    from sdft_kit.dashboard import status_line

    line = status_line({"step": 2, "steps": 10, "method": "sdft", "loss": 0.5, "elapsed_s": 30.0})
    assert "step 2/10" in line and "elapsed 00:30 < remaining 02:00" in line  # 15 s a step, 8 steps left
    done = status_line({"step": 10, "steps": 10, "method": "sdft", "loss": 0.5, "elapsed_s": 3725.0})
    assert "elapsed 1:02:05" in done and "remaining" not in done


FINISHED = """\
import sys
sys.path.insert(0, "tests")
from test_views import make_record
from sdft_kit.dashboard import watch

def run(steps, stop_after=None):
    for step in range(1, steps + 1):
        if step == stop_after:
            raise KeyboardInterrupt  # the user stops the run
        yield make_record(step=step, loss=1 / step)

done = watch(run(3))
"""
STOPPED = "stopped = watch(run(3, stop_after=3))"


def test_a_finished_or_stopped_run_leaves_its_last_state_as_a_picture_behind_the_widget(static_images):
    notebook = new_notebook(cells=[new_code_cell(FINISHED), new_code_cell(STOPPED)])
    NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(REPO)}}).execute()
    finished, stopped = ([o for o in cell.outputs if o.output_type == "display_data"] for cell in notebook.cells)
    assert notebook.cells[1].outputs[-1].ename == "KeyboardInterrupt"  # the stop still reaches the user
    for outputs, last_step in ((finished, 3), (stopped, 2)):
        assert len(outputs) == 1  # one output: the widget, with the picture added to it, not beside it
        data = outputs[0].data
        assert data["application/vnd.jupyter.widget-view+json"]["model_id"]  # live front ends keep the widget
        assert data["text/plain"].startswith(f"training dashboard, last state: step {last_step}/3 · SDFT")
        png = base64.b64decode(data["image/png"])
        # one PNG of the status line (36 px), curves (380, the legend under the plots), strip (2 rows, the answer has a newline: 228), detail (320)
        assert png_size(png) == (STATIC_WIDTH * STATIC_SCALE, (36 + 380 + 228 + 320) * STATIC_SCALE)
        assert data["text/html"].count("<img ") == 1 and data["image/png"] in data["text/html"]
    # Saved without widget state (JupyterLab's default), nbconvert skips the widget and shows the picture.
    notebook.metadata.pop("widgets", None)
    page, _ = HTMLExporter().from_notebook_node(notebook)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 2


def test_the_status_line_keeps_the_forgetting_monitors_latest_scores():
    from sdft_kit.dashboard import status_line

    scored = {"step": 2, "prior_skills": 0.875, "new_task": 0.3125, "new_task_measure": "ROUGE-L F1"}
    line = status_line({"step": 3, "steps": 10, "method": "sdft", "loss": 0.5}, scored)
    assert "prior skills 87.5%" in line and "new task 0.312" in line and "at step 2" in line
    assert "prior skills" not in status_line({"step": 3, "steps": 10, "method": "sdft", "loss": 0.5})
    dash = Dashboard()
    dash.update({**make_record(step=1), "monitor_start": {**scored, "step": 0, "prior_skills": 1.0}})
    assert "prior skills 100.0%" in dash.status.value and "at step 0" in dash.status.value
    dash.update({**make_record(step=2), "monitor": scored})
    dash.update(make_record(step=3))  # not scored: the latest scores stay
    assert "step 3/3" in dash.status.value and "prior skills 87.5%" in dash.status.value
    assert [t.name for t in dash.figures["curves"].data if t.xaxis == "x3"][:2] == ["SDFT prior skills", "SDFT new task"]
