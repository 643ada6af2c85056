"""The web app end to end: over HTTP with gradio_client, and in headless Chromium with Playwright.

The app runs in this process on a free port; training uses tiny settings (2 steps, batch 2,
8 new tokens, one thread). The browser is Debian's chromium (no browser download)."""

import importlib.util
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sdft_kit" / "samples" / "demo.jsonl"
CHROMIUM = "/usr/bin/chromium"
TINY_KNOBS = ["embedded", False, "sdft", 2, 5e-4, 16, 8, 2, "base", "forward KL (paper)", 0, 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("sdft_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = tmp_path_factory.mktemp("runs")
    demo = module.build(str(runs), max_upload_mb=1, threads=1)
    port = _free_port()
    module.launch(demo, port=port, max_upload_mb=1, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/", runs
    demo.worker.wait()
    demo.close()


def _bad_files(folder: Path) -> dict[str, Path]:
    files = {"binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "columns": b"question,answer\nHi?,Hello.\n",
             "empty": b"", "json": b'{"prompt": "a", "demonstration": "b"}\n{"prompt": "c"}\n'}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_bytes(data)
    return paths


def test_upload_train_and_read_back_the_plots_over_http(app, tmp_path):
    demo, url, runs = app
    client = gradio_client.Client(url, verbose=False)
    expected = {"binary": "binary file", "columns": "CSV header has columns 'question', 'answer'",
                "empty": "the file is empty", "json": "line 2: field 'demonstration' is missing"}
    for name, path in _bad_files(tmp_path).items():
        status, preview, *_ = client.predict(gradio_client.handle_file(str(path)), *TINY_KNOBS, api_name="/load_data")
        assert expected[name] in status and preview == "", name
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"prompt": "a", "demonstration": "b"}\n' * 40_000)  # 1.5 MB > the 1 MB limit
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(gradio_client.handle_file(str(big)), *TINY_KNOBS, api_name="/load_data")
    message, _ = client.predict(*TINY_KNOBS, api_name="/start")
    assert "no data yet" in message  # nothing was loaded in this session: a clear message, nothing started

    status, preview, prompt, demonstration, command = client.predict(gradio_client.handle_file(str(SAMPLE)),
                                                                     *TINY_KNOBS, api_name="/load_data")
    assert "24 examples" in status and "teacher sees" in preview and prompt == "What color is the sky on a clear day?"
    assert command == ("sdft-kit train --data demos.jsonl --out runs/my-run --teacher base --max-new-tokens 8 "
                       "--steps 2 --batch-size 2 --threads 1")
    message, _ = client.predict(*TINY_KNOBS, api_name="/start")
    assert message.startswith("Started"), message
    busy, _ = client.predict(*TINY_KNOBS, api_name="/start")
    assert "already in progress" in busy
    deadline = time.time() + 240
    while True:
        shown, curves, strip, detail, position = client.predict("log_ratio", api_name="/poll")
        text = shown.split("\n\n")[0]  # the status line; the teacher check's verdict follows it
        if text.endswith("done") or "failed" in text or time.time() > deadline:
            break
        time.sleep(1)
    assert text.startswith("step 2/2, elapsed ") and text.endswith("done"), text
    assert "\n\nTeacher check (8 records" in shown  # run before SDFT training, shown under the status
    curves = json.loads(curves["plot"])
    loss = [trace for trace in curves["data"] if trace["name"] == "SDFT loss"][0]
    assert loss["x"] == [1, 2] and all(y > 0 for y in loss["y"])
    strip = json.loads(strip["plot"])
    assert strip["data"][0]["type"] == "bar" and len(strip["data"][0]["text"]) >= 1  # one bar per token
    assert json.loads(detail["plot"])["layout"]["title"]["text"].startswith("token #")

    run_name = next(runs.iterdir()).name
    note, path = client.predict(run_name, api_name="/export_adapter")
    assert "adapter.zip" in note and Path(path).stat().st_size > 10_000
    note, _ = client.predict("../../etc", api_name="/export_adapter")
    assert "pick a run" in note  # run names are checked against the runs folder, never used as given


def test_browser_upload_start_and_watch_a_step(app, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (CI installs it in .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    demo, url, runs = app
    demo.worker.wait()  # one training at a time: let an earlier test's run finish
    bad = _bad_files(tmp_path)["binary"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(url)
        upload = page.locator("#upload input[type=file]")
        upload.set_input_files(str(bad))
        page.get_by_text("binary file").wait_for()  # the error is shown in the page
        page.locator("#upload button[aria-label='Clear']").first.click()
        upload.set_input_files(str(SAMPLE))
        page.get_by_text("24 examples").wait_for()  # the app is still usable
        page.get_by_text("teacher sees (query + demonstration)").first.wait_for()
        page.get_by_role("tab", name="2 · Train").click()
        steps = page.locator("#steps input")
        steps.fill("2")
        steps.press("Tab")
        page.get_by_text("--steps 2").wait_for()  # the equivalent command follows the knobs
        page.locator("#start").click()
        page.locator("#status").get_by_text("step 1/2").wait_for(timeout=180_000)
        page.locator("#status").get_by_text("done").wait_for(timeout=180_000)
        page.locator("#strip .js-plotly-plot").wait_for()
        page.wait_for_timeout(1500)  # let plotly finish drawing
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
    if os.environ.get("SDFT_KIT_UPDATE_SCREENSHOT"):  # refresh the README's picture
        shutil.copy(shot, ROOT / "docs" / "img" / "app.png")
