import json
import math
import subprocess
import sys

import pytest

from sdft_kit.views import (DIVERGING, SAMPLED, SHARED, batch_html, before_after, clamp, curves, display_token, escaped,
                            export_token_html, loudest_token, metrics_for, retention_matrix, robust_bounds, smooth,
                            token_change, token_detail, token_strip, token_values, topk_entropy)


def make_record(step=1, tokens=("The", " answer", " is", "\n", "12", "<|im_end|>"), method="sdft", loss=0.5,
                values=None):
    """A step record shaped like `trainer.sample_record`'s, with hand-picked numbers."""
    n = len(tokens)
    student_lp = [math.log(0.9 - 0.1 * (i % 5)) for i in range(n)]
    teacher_lp = [math.log(0.2 + 0.1 * (i % 5)) for i in range(n)]
    student_topk = [[[tok, 0.6], [" other", 0.2], [" the", 0.1]] for tok in tokens]
    teacher_topk = [[[" the", 0.5], [" teacher", 0.3], [tok, 0.1]] for tok in tokens]
    sft = method == "sft"
    return {
        "step": step, "steps": 3, "method": method, "loss": loss, "mean_kl": None if sft else loss * 1.2,
        "lr": 5e-4, "grad_norm": 1.0, "tokens": 20, "seconds": {"total": 2.0}, "elapsed_s": 2.0 * step,
        "peak_mem_mb": 100.0,
        "sample": {
            "prompt": "What is 7 plus 5?", "source": "demo.jsonl:1", "token_ids": list(range(n)),
            "tokens": list(tokens),
            "values": list(values) if values is not None else [0.1 * (i + 1) for i in range(n)],
            "in_loss": [0 if i < 3 else 1 for i in range(n)],
            "student_logprob": student_lp, "teacher_logprob": None if sft else teacher_lp,
            "student_topk": student_topk, "teacher_topk": None if sft else teacher_topk,
        },
    }


def test_whitespace_is_made_visible_and_markup_stays_text():
    assert display_token(" capital") == "␣capital"
    assert display_token("\n\n") == "↵↵"
    assert display_token("\tx") == "⇥x"
    assert display_token("") == "∅"
    assert display_token("<|im_end|>") == "<|im_end|>"
    assert escaped(display_token(" <br>")) == "␣&lt;br&gt;"


def test_token_strip_data_equals_the_record():
    record = make_record()
    sample = record["sample"]
    fig = token_strip(record, "kl")
    bar = fig.data[0]
    # escaped because plotly reads <...> in labels as markup
    assert list(bar.text) == ["The", "␣answer", "␣is", "↵", "12", "&lt;|im_end|&gt;"]
    assert list(bar.x) == [3, 7, 3, 1, 2, 10]  # widths: characters shown
    assert list(bar.y) == [0, 0, 0, 0, 1, 1]  # a newline ends the row
    low, high = robust_bounds(sample["values"], "positive")
    assert (bar.marker.cmin, bar.marker.cmax) == (low, high) == (0.0, pytest.approx(0.575))
    assert list(bar.marker.color) == pytest.approx([min(v, high) for v in sample["values"]])
    assert list(bar.marker.opacity) == [0.45, 0.45, 0.45, 1.0, 1.0, 1.0]  # first three outside the loss
    for i, hover in enumerate(bar.hovertext):  # both probabilities, exactly the record's
        assert f"student p = {math.exp(sample['student_logprob'][i]):.4f}" in hover
        assert f"teacher p = {math.exp(sample['teacher_logprob'][i]):.4f}" in hover
    assert "teacher disagrees" in bar.marker.colorbar.title.text


def test_log_ratio_is_signed_diverging_and_blue_means_teacher_prefers():
    record = make_record()
    sample = record["sample"]
    bar = token_strip(record, "log_ratio").data[0]
    expected = [t - s for t, s in zip(sample["teacher_logprob"], sample["student_logprob"])]
    assert token_values(sample, "log_ratio") == pytest.approx(expected)
    assert bar.marker.cmin == -bar.marker.cmax
    assert [list(stop) for stop in bar.marker.colorscale] == DIVERGING
    assert DIVERGING[-1][1] == "#2166ac" and "blue: teacher likes the token more" in bar.marker.colorbar.title.text
    assert list(bar.marker.color) == pytest.approx([min(max(v, -bar.marker.cmax), bar.marker.cmax) for v in expected])


def test_colour_clamp_handles_inf_and_nan():
    values = [1.0, float("nan"), float("inf"), float("-inf"), 2.0, 0.5]
    low, high = robust_bounds(values, "signed")
    assert math.isfinite(low) and math.isfinite(high) and low == -high
    assert clamp(values, low, high, 0.0) == [pytest.approx(min(1.0, high)), 0.0, high, low, high, 0.5]
    assert robust_bounds([float("nan"), float("inf")], "positive") == (0.0, 1.0)
    assert robust_bounds([], "signed") == (-1.0, 1.0)
    assert robust_bounds([0.0, 0.0], "positive") == (0.0, 1.0)
    assert robust_bounds([5.0], "probability") == (0.0, 1.0)
    # one outlier does not set the scale: 95th percentile of 1..20 and 1000
    assert robust_bounds(list(range(1, 21)) + [1000.0], "positive")[1] == pytest.approx(20.0)

    record = make_record(values=[0.1, float("nan"), float("inf"), 0.3, float("-inf"), 0.2])
    fig = token_strip(record, "kl")
    colours = list(fig.data[0].marker.color)
    assert all(math.isfinite(c) for c in colours)
    assert colours[1] == 0.0 and colours[2] == fig.data[0].marker.cmax and colours[4] == 0.0
    text = fig.to_json()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON for the browser
    json.loads(text)


def test_empty_completion_and_missing_sample_give_a_message_not_an_error():
    empty = make_record(tokens=())
    for fig in (token_strip(empty), token_detail(empty, 3)):
        assert len(fig.data) == 0 and "empty completion" in fig.layout.annotations[0].text
    no_sample = {"step": 4, "method": "sdft", "loss": 0.1}
    for fig in (token_strip(no_sample), token_detail(no_sample, 0)):
        assert len(fig.data) == 0 and "no sample" in fig.layout.annotations[0].text
    assert loudest_token(empty, "kl") == 0


def test_sft_records_fall_back_to_student_metrics():
    record = make_record(method="sft")
    assert metrics_for(record) == ["nll", "student_prob"]
    bar = token_strip(record, "log_ratio").data[0]  # no teacher: falls back to the NLL
    assert "NLL" in bar.marker.colorbar.title.text
    assert list(bar.marker.color) == pytest.approx([min(v, bar.marker.cmax) for v in record["sample"]["values"]])
    assert all("teacher p = – (SFT)" in h for h in bar.hovertext)
    probs = token_strip(record, "student_prob").data[0]
    assert list(probs.marker.color) == pytest.approx([math.exp(lp) for lp in record["sample"]["student_logprob"]])
    detail = token_detail(record, 1)
    assert len(detail.data) == 1 and "demonstration" in detail.layout.title.text


def test_token_detail_bars_keep_topk_order_and_mark_sampled_and_shared():
    record = make_record()
    sample = record["sample"]
    fig = token_detail(record, 1)
    student, teacher = fig.data
    assert list(student.x) == [p for _, p in sample["student_topk"][1]]
    assert list(teacher.x) == [p for _, p in sample["teacher_topk"][1]]
    assert list(fig.layout.yaxis.ticktext) == ["␣answer", "␣other", "␣the"]
    assert list(fig.layout.yaxis2.ticktext) == ["␣the", "␣teacher", "␣answer"]
    assert list(student.y) == [0, 1, 2] and fig.layout.yaxis.autorange == "reversed"  # most likely on top
    assert student.marker.color[0] == SAMPLED and teacher.marker.color[2] == SAMPLED
    assert student.marker.color[2] == SHARED and teacher.marker.color[0] == SHARED  # " the" is in both
    assert student.marker.color[1] != SHARED  # " other" is the student's only
    assert f"teacher p = {math.exp(sample['teacher_logprob'][1]):.4f}" in fig.layout.title.text
    assert token_detail(record, 99).layout.title.text.startswith("token #5")  # clamped to the last token


def test_topk_entropy_counts_the_tail_as_one_outcome():
    assert topk_entropy([["a", 0.5], ["b", 0.5]]) == pytest.approx(math.log(2))
    assert topk_entropy([["a", 0.5]]) == pytest.approx(math.log(2))  # tail 0.5
    assert topk_entropy([["a", 1.0]]) == 0.0
    record = make_record()
    gap = token_values(record["sample"], "entropy_gap")
    student_h = topk_entropy([["x", 0.6], ["y", 0.2], ["z", 0.1]])
    teacher_h = topk_entropy([["x", 0.5], ["y", 0.3], ["z", 0.1]])
    assert gap == pytest.approx([student_h - teacher_h] * 6)


def test_curves_plot_each_runs_raw_and_smoothed_values():
    sdft = [make_record(step=s, loss=l) for s, l in [(1, 1.0), (2, 2.0), (3, float("nan"))]]
    sft = [make_record(step=s, loss=l, method="sft") for s, l in [(1, 3.0), (2, 1.0)]]
    fig = curves(sdft, sft, weight=0.5)
    by_name = {(t.name, t.mode, t.xaxis): t for t in fig.data}
    raw = by_name[("SDFT loss", "markers", "x")]
    assert list(raw.x) == [1, 2, 3] and list(raw.y) == [1.0, 2.0, None]
    line = by_name[("SDFT", "lines", "x")]
    assert list(line.y) == pytest.approx([1.0, 1.25 / 0.75, None])  # bias-corrected EMA
    assert list(by_name[("SDFT mean_kl", "markers", "x2")].y) == pytest.approx([1.2, 2.4, None])
    assert list(by_name[("SFT loss", "markers", "x")].y) == [3.0, 1.0]
    assert ("SFT mean_kl", "markers", "x2") not in by_name  # SFT has no KL
    assert smooth([None, 4.0]) == [None, pytest.approx(4.0)]


def test_retention_matrix_and_before_after_show_their_inputs():
    tasks = ["math", "capitals"]
    fig = retention_matrix(tasks, [[0.1, 0.5], [0.8, 0.4], [0.7, float("nan")]])
    heat = fig.data[0]
    assert list(heat.x) == tasks and list(heat.y) == ["base", "after math", "after capitals"]
    assert [list(row) for row in heat.z] == [[0.1, 0.5], [0.8, 0.4], [0.7, None]]
    assert heat.text[2][1] == ""
    with pytest.raises(ValueError, match="3 rows"):
        retention_matrix(tasks, [[0.1, 0.5], [0.8], [0.1, 0.1]])

    table = before_after("What is 7 plus 5?", "It is 13.", "It is <12>.\nDone.", "Answer: 12.").data[0]
    assert [list(col) for col in table.cells.values] == [["It is 13."], ["It is &lt;12&gt;.<br>Done."], ["Answer: 12."]]
    assert len(before_after("q", "a", "b").data[0].cells.values) == 2


def test_exported_html_is_self_contained(tmp_path):
    record = make_record()
    page = export_token_html(record, tmp_path / "view" / "tokens.html").read_text(encoding="utf-8")
    assert "<script src" not in page and len(page) > 3_000_000  # plotly.js inlined, nothing fetched
    assert '"␣answer"' in page or '"\\u2423answer"' in page
    assert "plotly_click" in page
    tricky = export_token_html(make_record(tokens=("</script>", "<b>", "x")), tmp_path / "t.html").read_text()
    assert tricky.count("</script>") == 2  # the inlined plotly.js and the page's own script only
    export_token_html(make_record(tokens=()), tmp_path / "empty.html")
    export_token_html({"step": 1}, tmp_path / "bare.html")


def test_views_import_no_ui_library():
    code = ("import sys, sdft_kit.views, sdft_kit.dashboard; "
            "print(sorted(m for m in ('ipywidgets', 'gradio', 'anywidget') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_token_change_compares_the_same_tokens_and_counts_what_went_down():
    before = make_record(values=[0.5, 0.5, 0.5, 0.4, 0.3, 0.2])
    after = make_record(values=[0.9, 0.9, 0.9, 0.1, 0.4, 0.1])  # positions 0-2 are outside the loss
    fig = token_change(before, after)
    assert [list(bar.y) for bar in fig.data] == [[0.5, 0.5, 0.5, 0.4, 0.3, 0.2], [0.9, 0.9, 0.9, 0.1, 0.4, 0.1]]
    assert "mean 0.300 → 0.200; lower on 2 of 3 tokens" in fig.layout.title.text
    other = make_record(tokens=("A", "B", "C", "D", "E", "F"))
    with pytest.raises(ValueError, match="same completion"):
        token_change(before, {**other, "sample": {**other["sample"], "token_ids": [9] * 6}})


def test_batch_html_marks_prompt_trained_and_skipped_tokens():
    import torch

    from sdft_kit.batch import Completions

    class Tok:
        def decode(self, ids):
            return {1: "<q>", 2: " hi", 3: " yes", 4: "<end>", 0: "PAD"}[ids[0]]

    batch = Completions(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]), torch.tensor([[3, 3, 4, 0]]),
                        torch.tensor([[1, 1, 1, 0]]))
    page = batch_html(Tok(), batch, torch.tensor([[0, 1, 1, 0]]))
    assert "2 prompt tokens, 3 completion tokens, 2 in the loss" in page
    assert "PAD" not in page and "&lt;end&gt;" in page  # padding left out, tokens escaped
    spans = page.split("</b>")[1]
    assert spans.count("#eeeeee") == 2 and spans.count("#fdd49e") == 1 and spans.count("#c7e9c0") == 2


def test_a_character_split_over_byte_level_tokens_shows_whole():
    from sdft_kit.app_data import load_tokenizer
    from sdft_kit.records import token_pieces
    from sdft_kit.views import display_pieces, strip_layout

    tokenizer = load_tokenizer("embedded")
    ids = tokenizer("Yes 👍🏽 ok", add_special_tokens=False).input_ids
    alone = [tokenizer.decode([i]) for i in ids]
    assert "\ufffd" in "".join(alone)  # decoded one by one, the emoji's bytes are broken
    pieces = token_pieces(tokenizer, ids)
    assert "".join(pieces) == "Yes 👍🏽 ok" and "" in pieces
    record = make_record(tokens=alone)
    record["sample"]["pieces"] = pieces
    shown = display_pieces(record["sample"])
    assert "␣👍" in shown and "🏽" in shown and "\ufffd" not in "".join(shown)
    bar = token_strip(record, "kl").data[0]
    assert len(bar.x) == len(ids)  # still one box (one colour, one click) per token
    places = strip_layout(shown, 80)
    for i, text in enumerate(shown[:-1]):
        if not text:  # a piece: a narrow box joined to the next token's, on its row, with no gap
            assert places[i + 1] == (places[i][0], pytest.approx(places[i][1] + bar.x[i]))
    assert "a byte-level piece of the next character" in bar.hovertext[shown.index("")]
    first_piece = shown.index("")
    assert "a piece of ␣👍" in token_detail(record, first_piece).layout.title.text
    del record["sample"]["pieces"]  # records written before pieces existed still draw, token by token
    assert list(token_strip(record, "kl").data[0].text) == [escaped(display_token(t)) for t in alone]


def test_a_one_line_strip_keeps_a_full_row_under_its_title_and_colour_bar():
    for tokens, rows in ((("Yes", "."), 1), (("a\n", "b\n", "c"), 3)):
        layout = token_strip(make_record(tokens=tokens), "kl").layout
        assert layout.height - layout.margin.t - layout.margin.b >= 34 * rows


def test_curves_legend_names_the_raw_dots_and_the_smoothed_line():
    fig = curves([make_record(step=1), make_record(step=2, loss=0.3)], weight=0.6)
    legend = {t.name: t.mode for t in fig.data if t.showlegend is not False}
    assert legend == {"SDFT": "lines", "raw value at each step": "markers", "smoothed (EMA, weight 0.6)": "lines"}
    # under the plots, not over them: a UI's label for the figure (gradio's Plot) sits on its top-left corner
    assert fig.layout.legend.y < 0 and fig.layout.legend.yanchor == "top"


def test_curves_draw_the_forgetting_monitors_scores_in_a_third_panel_when_a_run_has_them():
    def scored(step, prior, new):
        return {"step": step, "prior_skills": prior, "new_task": new, "new_task_measure": "ROUGE-L F1", "seconds": 1.0}

    sdft = [make_record(step=1), make_record(step=2), make_record(step=3)]
    sdft[0]["monitor_start"], sdft[1]["monitor"], sdft[2]["monitor"] = scored(0, 1.0, 0.2), scored(2, 0.9, 0.4), \
        scored(3, 0.8, 0.5)
    fig = curves(sdft, [make_record(step=1, method="sft")])
    panel = {t.name: t for t in fig.data if t.xaxis == "x3"}
    assert list(panel["SDFT prior skills"].x) == [0, 2, 3] and list(panel["SDFT prior skills"].y) == [1.0, 0.9, 0.8]
    assert list(panel["SDFT new task"].y) == [0.2, 0.4, 0.5] and panel["SDFT new task"].line.dash == "dash"
    assert "SFT prior skills" not in panel  # the SFT run was not monitored
    assert "ROUGE-L F1" in panel["SDFT new task"].customdata and fig.layout.yaxis3.range == (0, 1.03)
    assert fig.layout.annotations[2].text.startswith("forgetting monitor")
    plain = curves([make_record(step=1)])
    assert "xaxis3" not in plain.layout.to_plotly_json() and len(plain.layout.annotations) == 2  # as before


def test_tiny_probabilities_print_in_scientific_notation():
    from sdft_kit.views import probability_text

    assert [probability_text(p) for p in (0.7181, 0.001, 3.2e-6, 0.0, float("nan"))] == [
        "0.7181", "0.0010", "3.2e-06", "0.0000", "–"]
    record = make_record()
    record["sample"]["student_logprob"][4] = math.log(3.2e-6)
    assert "student p = 3.2e-06" in token_detail(record, 4).layout.title.text
    assert "student p = 3.2e-06" in token_strip(record).data[0].hovertext[4]


def test_the_first_token_shown_is_the_most_divergent_one_both_models_make_readable():
    record = make_record(tokens=("A", "B", "C", "D"))
    sample = record["sample"]
    sample["student_logprob"] = [math.log(p) for p in (0.5, 1e-7, 0.4, 0.3)]
    sample["teacher_logprob"] = [math.log(p) for p in (0.4, 0.2, 0.05, 0.3)]
    # token 1 diverges most (log 0.2/1e-7), but the student's p there reads as 0: token 2 is next (log 0.05/0.4)
    assert loudest_token(record, "log_ratio") == 2
    sample["student_logprob"] = [math.log(1e-7)] * 4  # nothing readable: the most divergent of all
    assert loudest_token(record, "log_ratio") == 0  # log 0.4/1e-7
