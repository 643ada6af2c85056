"""Calibrate the teacher check's answer-quality thresholds on the bundled data.

For each bundled set of demonstrations (the knowledge and tool-use tasks' train records and the
demo sample), every record and every template: the check's figures, plus a ground truth of
whether each greedy answer is right, by a scorer that fits the set (the ground truth):

    tooluse    tool call equal to the demonstration's (`check.tool_scorer`, the paper's score)
    knowledge  every key fact of the demonstration (its numbers and its capitalised names after
    demo       the first word) appears in the answer (`key_facts`, this script only)

The demo set is also scored by `check.contains_scorer` during the run (the whole demonstration,
its "Answer:" opening included): format and content, which no answer of the embedded model meets.

The thresholds in check.py are then chosen so that the default verdict (ROUGE-L F1, no scorer)
says READY only where the ground truth does (teacher right on >= READY_ACCURACY of records and
READY_ACCURACY_LIFT more than the student). Writes benchmarks/results/check_calibration.json.

    python benchmarks/check_calibration.py [--n 40] [--max-new-tokens 48] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from sdft_kit import SAMPLE_DATA, load_examples, load_model
from sdft_kit.check import TemplateResult, check_teacher, contains_scorer, judge, tool_scorer
from sdft_kit.data import Example
from sdft_kit.models import set_threads
from sdft_kit.tasks import TASK_DATA

OUT = Path(__file__).parent / "results" / "check_calibration.json"


def key_facts(answer: str, example: Example) -> bool:
    """Every number and every capitalised name (after the first word) of the demonstration is in the answer."""
    words = re.findall(r"[\w,./-]+", example.demonstration)
    facts = {w.strip(".,") for i, w in enumerate(words) if any(c.isdigit() for c in w) or (i > 0 and w[0].isupper())}
    return all(fact in answer for fact in facts if fact)


SETS = {
    "knowledge": (TASK_DATA / "knowledge_train.jsonl", key_facts),
    "tooluse": (TASK_DATA / "tooluse_train.jsonl", tool_scorer),
    "demo": (SAMPLE_DATA, contains_scorer),
}


def summarize(name: str, check: dict) -> list[dict]:
    """Per template: the answers' accuracy by the ground truth, their ROUGE-L F1, and the verdict each gives."""
    path, run_scorer = SETS[name]
    truth = tool_scorer if name == "tooluse" else key_facts
    examples = {ex.source: ex for ex in load_examples(path)}
    rows = []
    for result in check["results"]:
        fields = {k: v for k, v in result.items() if k not in ("gain", "control_gain", "share_better")}
        answers = [(examples[row["source"]], row["student_answer"], row["teacher_answer"]) for row in result["rows"]]
        accuracy = [sum(truth(student, ex) for ex, student, _ in answers) / len(answers),
                    sum(truth(teacher, ex) for ex, _, teacher in answers) / len(answers)]
        # the run's own scorer, per row (for demo: the whole demonstration, "Answer:" included)
        run_accuracy = [sum(row[key] for row in result["rows"]) / len(answers)
                        for key in ("student_correct", "teacher_correct")]
        by_truth = judge(TemplateResult(**{**fields, "student_accuracy": accuracy[0], "teacher_accuracy": accuracy[1]}))[0]
        by_similarity = judge(TemplateResult(**{**fields, "student_accuracy": None, "teacher_accuracy": None}))[0]
        rows.append({"template": result["template"], "records": result["records"], "student_accuracy": accuracy[0],
                     "teacher_accuracy": accuracy[1], "run_scorer": run_scorer.__name__,
                     "run_scorer_accuracy": run_accuracy,
                     "student_similarity": result["student_similarity"],
                     "teacher_similarity": result["teacher_similarity"], "gain": result["gain"],
                     "control_gain": result["control_gain"], "share_better": result["share_better"],
                     "echo_rate": result["echo_rate"], "copy_rate": result["copy_rate"],
                     "verdict_by_accuracy": by_truth, "verdict_by_similarity": by_similarity})
        r = rows[-1]
        print(f"{name:10} {r['template']:7} accuracy {accuracy[0]:.0%} -> {accuracy[1]:.0%}  ROUGE-L "
              f"{r['student_similarity']:.2f} -> {r['teacher_similarity']:.2f}  gain {r['gain']:+.2f} control "
              f"{r['control_gain']:+.2f}  echo {r['echo_rate']:.0%} copy {r['copy_rate']:.0%}  verdict: {by_truth} by "
              f"accuracy, {by_similarity} by similarity", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=40, help="records per set (all of them by default)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--rescore", action="store_true", help="recompute the summaries from the answers in --out")
    args = parser.parse_args()
    if args.rescore:
        saved = json.loads(Path(args.out).read_text(encoding="utf-8"))
        for name, result in saved["sets"].items():
            result["templates"] = summarize(name, result["check"])
        Path(args.out).write_text(json.dumps(saved, indent=1), encoding="utf-8")
        return
    set_threads(args.threads)
    model, tokenizer = load_model("embedded")
    results = {}
    for name in args.sets.split(","):
        path, scorer = SETS[name]
        start = time.perf_counter()
        check = check_teacher(model, tokenizer, load_examples(path), n=args.n, max_new_tokens=args.max_new_tokens,
                              scorer=scorer)
        rows = summarize(name, check.to_dict())
        results[name] = {"data": str(path.name), "seconds": round(time.perf_counter() - start, 1), "templates": rows,
                         "check": check.to_dict()}
    Path(args.out).write_text(json.dumps({"max_new_tokens": args.max_new_tokens, "threads": args.threads,
                                          "sets": results}, indent=1), encoding="utf-8")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
