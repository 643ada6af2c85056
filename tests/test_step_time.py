"""benchmarks/step_time.py's lower bound of a step, on made-up steps (hand-computed)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from step_time import add_bounds, paired, step_bound  # noqa: E402


def step(name_round, s, student=None, teacher=None, passes=None, weight_bytes=None):
    phases = {"student": student, "teacher": teacher} if student is not None else None
    return {"round": name_round, "s": s, "phases": phases, "decode_passes": passes, "decode_bytes": weight_bytes}


def test_the_bound_is_the_measured_passes_plus_a_rollout_at_the_memory_rate():
    # 64 decode passes over 540 MB at 20 GB/s = 1.728 s, plus 2.9 + 1.5 s of passes
    assert step_bound(step(0, 8.0, 2.9, 1.5, 64, 540e6), 20e9) == pytest.approx(6.128)
    assert step_bound(step(0, 2.0, 1.8, 0.0, 0, 540e6), 20e9) == pytest.approx(1.8)  # SFT: its student pass


def test_methods_without_phases_borrow_the_rounds_fastest_sdft_figures():
    steps = {"sdft": [step(0, 8.0, 2.9, 1.5, 64, 270e6), step(1, 9.0, 3.0, 1.6, 60, 270e6)],
             "sdft-hf": [step(0, 12.0, 3.1, 1.4, 62, 540e6)],
             "trl": [step(0, 11.0), step(1, 10.0)]}
    add_bounds(steps, [{"bytes_per_s": 20e9}, {"bytes_per_s": 10e9}])
    assert steps["sdft"][0]["bound_s"] == pytest.approx(4.4 + 64 * 270e6 / 20e9)
    assert steps["sdft"][1]["step_over_bound"] == pytest.approx(9.0 / (4.6 + 60 * 270e6 / 10e9))
    # TRL, round 0: the fastest passes (4.4 s), the fewest decode passes (62), the student's fp32 bytes
    assert steps["trl"][0]["bound_s"] == pytest.approx(4.4 + 62 * 540e6 / 20e9)
    assert steps["trl"][1]["bound_s"] == pytest.approx(4.6 + 60 * 270e6 / 10e9)  # only sdft ran in round 1
    assert [(a["round"], b["round"]) for a, b in paired(steps["trl"], steps["sdft-hf"])] == [(0, 0)]


def test_reused_rollouts_share_a_rollouts_bound_and_do_not_lower_anothers():
    reused = {**step(0, 5.0, 2.9, 1.5, 16, 270e6), "steps_per_generation": 4}  # 64 passes shared by 4 steps
    steps = {"sdft": [step(0, 8.0, 2.9, 1.5, 64, 270e6)], "sdft-reuse4": [reused],
             "trl": [step(0, 11.0)], "trl-reuse4": [{**step(0, 7.0), "steps_per_generation": 4}]}
    add_bounds(steps, [{"bytes_per_s": 20e9}])
    assert steps["sdft-reuse4"][0]["bound_s"] == pytest.approx(4.4 + 16 * 270e6 / 20e9)
    assert steps["trl"][0]["bound_s"] == pytest.approx(4.4 + 64 * 270e6 / 20e9)  # not the reused 16 passes
    assert steps["trl-reuse4"][0]["bound_s"] == pytest.approx(4.4 + 16 * 270e6 / 20e9)
