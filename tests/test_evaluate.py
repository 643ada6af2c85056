import json

import pytest
import torch
import torch.nn.functional as F

from sdft_kit.demos import render
from sdft_kit.evaluate import (EvalItem, choice_loglik, evaluate, extracted_answer_match, fact_match, normalize,
                               parse_tool_call, pick_choices, score_output, tool_call_match)


pytestmark = pytest.mark.usefixtures("one_thread")


def item(answers, kind="fact", prompt="Q?", choices=None):
    return EvalItem(({"role": "user", "content": prompt},), answers, kind, choices)


# --- extracted answer ---------------------------------------------------------------

LETTER_B = item(["B"], "extract")


@pytest.mark.parametrize("output", [
    "<reasoning>Nitrogen is 78%.</reasoning><answer>B</answer>",
    "<reasoning>\n...\n</reasoning>\n<answer>\n  B\n</answer>",  # whitespace and newlines
    "<answer>b</answer>",  # lower case letter
    "<ANSWER>B</ANSWER>",  # tag case
    "<answer>(B)</answer>",
    "<answer>B) Nitrogen</answer>",
    "<answer>B. Nitrogen</answer>",
    "<answer>B</answer> and again <answer>B</answer>",  # repeated, same answer
])
def test_extracted_letter_right(output):
    assert extracted_answer_match(output, LETTER_B)


@pytest.mark.parametrize("output", [
    "The answer is B.",  # no tags
    "<answer>B",  # unclosed tag
    "B</answer>",
    "<answer></answer>",  # empty
    "<answer>C</answer>",  # wrong letter
    "<answer>Bogus</answer>",  # a word starting with B is no letter
    "<answer>A</answer> or maybe <answer>B</answer>",  # two tags that disagree: a hedge
    "<answer>Nitrogen</answer>",  # the option text instead of the letter
    "",
])
def test_extracted_letter_wrong(output):
    assert not extracted_answer_match(output, LETTER_B)


def test_extracted_text_answer_compares_normalised_and_custom_pattern():
    paris = item(["Paris"], "extract")
    assert extracted_answer_match("<answer> paris. </answer>", paris)
    assert extracted_answer_match("<answer>The Paris</answer>", paris)  # articles dropped
    assert not extracted_answer_match("<answer>Paris, France</answer>", paris)  # equality, not containment
    assert extracted_answer_match("so... Final answer: 42", item(["42"], "extract"), pattern=r"Final answer:\s*(\S+)")
    assert not extracted_answer_match("Final answer: 43", item(["42"], "extract"), pattern=r"Final answer:\s*(\S+)")


# --- tool call ----------------------------------------------------------------------

GOLD = 'Action: tide_level\nAction Input: {"harbor": "Lowmoor", "date": "2025-12-24"}'
TOOL = item([GOLD], "tool")


@pytest.mark.parametrize("output", [
    GOLD,
    'Action:   tide_level  \nAction Input:{"date":"2025-12-24",\n "harbor": "Lowmoor"}',  # spaces, key order
    GOLD + "\nObservation: the water is 2.1 m high.",  # trailing text after the JSON
    GOLD + ' {"more": 1}',  # a second JSON value after the first is ignored
    "Sure! I will check the tide.\n" + GOLD,  # preamble
    GOLD + "\nAction: parcel_track\nAction Input: {\"code\": \"x\"}",  # only the first call counts
])
def test_tool_call_right(output):
    assert tool_call_match(output, TOOL)


@pytest.mark.parametrize("output", [
    "",
    'Action Input: {"harbor": "Lowmoor", "date": "2025-12-24"}',  # Action missing
    "Action: tide_level",  # Action Input missing
    "Action: tide_level\nAction Input: {harbor: Lowmoor, date: 2025-12-24}",  # bad JSON
    'Action: tide_level\nAction Input: {"harbor": "Lowmoor", "date": "2025-12-24"',  # truncated JSON
    'Action: Tide_level\nAction Input: {"harbor": "Lowmoor", "date": "2025-12-24"}',  # action case
    'action: tide_level\naction input: {"harbor": "Lowmoor", "date": "2025-12-24"}',  # keyword case
    'Action: bike_reserve\nAction Input: {"harbor": "Lowmoor", "date": "2025-12-24"}',  # wrong tool
    'Action: tide_level\nAction Input: {"harbor": "lowmoor", "date": "2025-12-24"}',  # value differs
    'Action: tide_level\nAction Input: {"harbor": "Lowmoor"}',  # key missing
    'Action: tide_level\nAction Input: {"harbor": "Lowmoor", "date": "2025-12-24", "x": 1}',  # extra key
    "Action: parcel_track\nAction Input: {}\n" + GOLD,  # a wrong first call
    "Action: <tool name>\nAction Input: <the input as JSON>",  # the format echoed
])
def test_tool_call_wrong(output):
    assert not tool_call_match(output, TOOL)


def test_tool_call_types_matter_and_parse():
    gold = item(['Action: bike_reserve\nAction Input: {"station": "Hilltop", "minutes": 30}'], "tool")
    assert not tool_call_match('Action: bike_reserve\nAction Input: {"station": "Hilltop", "minutes": "30"}', gold)
    assert parse_tool_call(gold.answers[0]) == ("bike_reserve", {"station": "Hilltop", "minutes": 30})
    assert parse_tool_call("Action:\nAction Input: {}") is None  # no action name


# --- fact ---------------------------------------------------------------------------

def test_normalize():
    assert normalize("The  Quick, brown fox!\n") == "quick brown fox"
    assert normalize("An apple a day") == "apple day"


def test_fact_match():
    displaced = item(["12,000", "twelve thousand"])
    assert fact_match("It displaced 12,000 people.", displaced)
    assert fact_match("about 12000 people", displaced)  # punctuation dropped on both sides
    assert fact_match("Twelve thousand people left.", displaced)
    assert not fact_match("It displaced 120,000 people.", displaced)  # whole words only
    assert not fact_match("1.2 million", displaced)
    assert not fact_match("", displaced)
    ostria = item(["Ostria"])
    assert fact_match("THE republic of OSTRIA!", ostria)
    assert not fact_match("an Ostrian town", ostria)  # list 'Ostrian' as an answer to accept it
    assert fact_match("Storm Orlena, in the old town", item(["Storm Orlena"]))


def test_item_validation_and_dispatch():
    with pytest.raises(ValueError, match="kind"):
        item(["x"], "regex")
    with pytest.raises(ValueError, match="answer"):
        item([])
    with pytest.raises(ValueError, match="choices"):
        item(["Paris"], "choice", choices=["London", "Rome"])
    assert score_output("it is 12,000", item(["12,000"]))
    assert score_output(GOLD, TOOL) and score_output("<answer>B</answer>", LETTER_B)
    with pytest.raises(ValueError, match="log-likelihood"):
        score_output("Paris", item(["Paris"], "choice", choices=["Paris", "Rome"]))


# --- on the embedded model ----------------------------------------------------------

EASY = [
    item(["Portuguese"], "choice", "What is the main language spoken in Brazil?",
         ["Spanish", "Portuguese", "French", "English"]),
    item(["Temperature"], "choice", "What does a thermometer measure?", ["Weight", "Speed", "Temperature", "Length"]),
]


def test_choice_loglik_is_the_mean_option_logprob(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    scores = choice_loglik(model, tokenizer, EASY, batch_size=3)  # batches cut across items
    assert [len(s) for s in scores] == [4, 4]
    assert pick_choices(EASY, scores) == ["Portuguese", "Temperature"]
    # the same number by hand: one unpadded forward pass per option, EOS not counted
    prompt = tokenizer(render(tokenizer, EASY[0].messages), add_special_tokens=False)["input_ids"]
    for option, score in zip(EASY[0].choices, scores[0]):
        answer = tokenizer(option, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1:-1]
        expected = F.log_softmax(logits.float(), -1).gather(-1, torch.tensor(answer)[:, None]).mean()
        assert score == pytest.approx(float(expected), abs=1e-4)


def test_evaluate_mixes_kinds_keeps_order_and_serialises(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    generated = [item(["Paris"], prompt="What is the capital of France? One word."),
                 item([GOLD], "tool", prompt="Say hello.")]
    items = [generated[0], EASY[0], generated[1]]
    result = evaluate(model, tokenizer, items, max_new_tokens=8, batch_size=2, progress=False)
    assert result.outputs[1] == "Portuguese" and result.correct[1]
    assert result.correct == [score_output(result.outputs[0], items[0]), True,
                              score_output(result.outputs[2], items[2])]
    assert not result.correct[2]  # no tool call in a greeting
    alone = evaluate(model, tokenizer, generated[::-1], max_new_tokens=8, batch_size=2, progress=False)
    assert alone.outputs == [result.outputs[2], result.outputs[0]]  # order restored after sorting by length
    record = json.loads(json.dumps(result.to_dict()))
    assert record["n"] == 3 and record["accuracy"] == pytest.approx(sum(result.correct) / 3)
    assert record["items"][1]["choices"] == EASY[0].choices and len(record["items"][1]["choice_scores"]) == 4
    assert set(record["accuracy_by_kind"]) == {"fact", "choice", "tool"}
