"""VQA accuracy pinned to the official GT-Vision-Lab/VQA evaluation (golden numbers from
tests/golden/make_vqa_golden.py, which runs the official code), on invented and real VQAv2 data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from tasks.base import Sample
from tasks.metrics import METRICS, normalize_answer, score_vqa, vqa_accuracy
from tasks.metrics.external import score_vqa_results
from tasks.metrics.vqa import official_round

GOLDEN = json.loads((Path(__file__).parent / "golden" / "vqa_golden.json").read_text(encoding="utf-8"))
TINY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vqav2-tiny"
CASES = GOLDEN["cases"]


def _tiny() -> Path:
    if not TINY.exists():
        pytest.skip(f"{TINY} is absent (development/CI data; see ../shared/data/README.md)")
    return TINY


@pytest.mark.parametrize("case", CASES, ids=[c["note"] for c in CASES])
@pytest.mark.parametrize("mode", ["vqaeval", "evalai"])
def test_per_question_accuracy_equals_official(case, mode):
    got = 100 * vqa_accuracy(case["prediction"], case["answers"], mode)
    assert round(got, 2) == case[f"expected_{mode}"]


def test_modes_differ_only_where_humans_are_unanimous():
    assert vqa_accuracy("Black.", ["black"] * 10, "vqaeval") == 0.0  # the official script's quirk
    assert vqa_accuracy("Black.", ["black"] * 10, "evalai") == 1.0
    assert vqa_accuracy("Black.", ["black"] * 7 + ["dark"] * 3, "vqaeval") == 1.0
    for c in CASES:
        if len(set(a.strip() for a in c["answers"])) > 1:
            assert c["expected_vqaeval"] == c["expected_evalai"], c["note"]


def test_leave_one_out_formula():
    # 2 of 10 humans: left-out human said it -> 1/3, otherwise 2/3 -> (2/3 + 16/3) / 10
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_accuracy("green", ["red"] * 10) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        vqa_accuracy("red", ["red"])
    with pytest.raises(ValueError, match="mode"):
        vqa_accuracy("red", ["red"] * 10, "lenient")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", list(GOLDEN["normalization"]))
def test_normalization_equals_official_and_is_idempotent(text):
    assert normalize_answer(text) == GOLDEN["normalization"][text]
    assert normalize_answer(normalize_answer(text)) == GOLDEN["normalization_twice"][text] == normalize_answer(text)


def test_normalization_corner_cases_users_report():
    assert normalize_answer("Black.") == normalize_answer("black") == "black"
    assert normalize_answer("a dog") == "dog"
    assert normalize_answer("two") == normalize_answer("2") == "2"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("3.5") == "3.5"
    assert normalize_answer("yes.") == "yes"
    assert normalize_answer("." * 40 + "x").count(".") == 8  # official sub(count=32) quirk


def test_aggregate_and_breakdowns_equal_official():
    for mode in ("vqaeval", "evalai"):
        r = score_vqa({c["question_id"]: c for c in CASES}, {c["question_id"]: c["prediction"] for c in CASES},
                      mode=mode, n_boot=100)
        official = GOLDEN["aggregate"][mode]
        assert round(r.values["overall"], 2) == official["overall"]
        assert r.info["overall_official_rounded"] == f"{official['overall']:.2f}"
        for t, v in official["perAnswerType"].items():
            assert round(r.values[f"perAnswerType/{t}"], 2) == v
        for t, v in official["perQuestionType"].items():
            assert round(r.values[f"perQuestionType/{t}"], 2) == v
        assert r.primary == "overall" and r.info["mode"] == mode
        assert [round(x, 2) for x in r.per_sample["overall"]] == [c[f"expected_{mode}"] for c in CASES]
        for key, (lo, hi) in r.ci.items():
            assert lo <= r.values[key] <= hi, key


def test_official_rounding_is_half_away_from_zero():
    assert official_round(100 * 5 / 8 / 10) == "6.25"
    assert official_round(0.125) == "0.13"  # Python 3's round() would give 0.12
    assert official_round(200 / 3) == "66.67"


def test_scoring_does_not_mutate_inputs_and_is_repeatable():
    data = {c["question_id"]: copy.deepcopy(c) for c in CASES}
    before = copy.deepcopy(data)
    preds = {c["question_id"]: c["prediction"] for c in CASES}
    a = score_vqa(data, preds, n_boot=50, seed=3)
    b = score_vqa(data, preds, n_boot=50, seed=3)
    assert data == before
    assert a.values == b.values and a.ci == b.ci


@pytest.mark.parametrize("mode", ["vqaeval", "evalai"])
def test_empty_prediction_scored_as_the_official_script_in_both_modes(mode):
    empty = [c for c in CASES if not c["prediction"].strip()]
    assert {c["expected_vqaeval"] for c in empty} >= {0.0, 30.0, 90.0, 100.0}  # the golden covers all outcomes
    data = {c["question_id"]: c["answers"] for c in empty}
    r = score_vqa(data, {c["question_id"]: c["prediction"] for c in empty}, mode=mode, n_boot=0)
    assert [round(x, 2) for x in r.per_sample["overall"]] == [c[f"expected_{mode}"] for c in empty]


def test_run_path_scores_an_empty_prediction_as_a_failure():
    """In ``mmbench run`` an empty string is what a failed sample leaves: it counts wrong, and the
    metric says which rule and mode it used."""
    assert score_vqa({1: [""] * 10}, {1: ""}, n_boot=0).values["overall"] == 100.0  # official
    r = score_vqa({1: [""] * 10}, {1: ""}, empty="wrong", n_boot=0)
    assert r.values["overall"] == 0.0 and "failed" in r.info["empty_prediction"]
    r = METRICS["vqa_accuracy"]([_sample(0, ["the"] * 4 + ["a"] * 6)], [""], n_boot=0)
    assert r.values["overall"] == 0.0 and r.info["mode"] == "evalai"
    with pytest.raises(ValueError, match="empty"):
        score_vqa({1: ["x"] * 10}, {1: ""}, empty="lenient", n_boot=0)  # type: ignore[arg-type]


def _sample(i: int, answers: list[str], **meta) -> Sample:
    return Sample(sample_id=str(i), image_ref="none", load_image=lambda: Image.new("RGB", (2, 2)),
                  question="q?", answers=tuple(answers), meta=meta)


def test_metrics_registry_scores_samples_in_order():
    samples = [_sample(0, ["cat"] * 10, answer_type="other"), _sample(1, ["2"] * 7 + ["3"] * 3, answer_type="number")]
    r = METRICS["vqa_accuracy"](samples, ["Cat.", "two"], n_boot=20, seed=0)
    assert r.values["overall"] == 100.0 and r.per_sample["overall"] == [100.0, 100.0]
    assert r.values["perAnswerType/number"] == 100.0
    r = METRICS["vqa_accuracy"](samples, ["", "3"], n_boot=20, seed=0)
    assert r.per_sample["overall"] == [0.0, 90.0]
    with pytest.raises(ValueError):
        METRICS["vqa_accuracy"](samples, ["cat"], n_boot=20, seed=0)


def _write_official(tmp_path: Path, questions: dict, annotations: dict, results: list) -> tuple[Path, Path, Path]:
    paths = (tmp_path / "q.json", tmp_path / "a.json", tmp_path / "r.json")
    for p, data in zip(paths, (questions, annotations, results)):
        p.write_text(json.dumps(data), encoding="utf-8")
    return paths


@pytest.mark.parametrize("name", ["A", "B"])
@pytest.mark.parametrize("mode", ["vqaeval", "evalai"])
def test_real_vqav2_fixture_through_official_files(tmp_path, name, mode):
    root = _tiny()
    golden = GOLDEN["vqav2_tiny"][name]
    results = [{"question_id": int(k), "answer": v} for k, v in golden["predictions"].items()]
    (tmp_path / "r.json").write_text(json.dumps(results), encoding="utf-8")
    r = score_vqa_results(root / "questions.json", root / "annotations.json", tmp_path / "r.json", mode=mode, n_boot=50)
    expected = golden["expected"][mode]
    assert r.info["overall_official_rounded"] == f"{expected['overall']:.2f}"
    assert [round(x, 2) for x in r.per_sample["overall"]] == [expected["evalQA"][k] for k in golden["predictions"]]


def test_official_file_checks(tmp_path):
    header = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014"}
    q = dict(header, questions=[{"question_id": i, "image_id": 1, "question": "?"} for i in (1, 2)])
    a = dict(header, annotations=[{"question_id": i, "image_id": 1, "answer_type": "other", "question_type": "what",
                                   "answers": [{"answer": "red", "answer_id": k} for k in range(10)]} for i in (1, 2)])
    qp, ap, rp = _write_official(tmp_path, q, a, [{"question_id": 1, "answer": "red"}])
    with pytest.raises(ValueError, match="no result"):
        score_vqa_results(qp, ap, rp)
    r = score_vqa_results(qp, ap, rp, missing="empty", n_boot=0)
    assert r.values["overall"] == 50.0 and r.values["perQuestionType/what"] == 50.0
    assert r.info["mode"] == "vqaeval" and r.info["n_failed"] == "1"
    # a question with no result is a failure even where the humans left the answer empty
    a["annotations"][1]["answers"] = [{"answer": "", "answer_id": k} for k in range(10)]
    qp, ap, rp = _write_official(tmp_path, q, a, [{"question_id": 1, "answer": "red"}])
    assert score_vqa_results(qp, ap, rp, missing="empty", n_boot=0).values["overall"] == 50.0
    rp.write_text(json.dumps([{"question_id": 1, "answer": "red"}, {"question_id": 2, "answer": ""}]))
    assert score_vqa_results(qp, ap, rp, n_boot=0).values["overall"] == 100.0  # an empty *answer* matches
    rp.write_text(json.dumps([{"question_id": i, "answer": "red"} for i in (1, 2, 3)]))
    with pytest.raises(ValueError, match="not in the annotations"):
        score_vqa_results(qp, ap, rp)
    rp.write_text(json.dumps([{"question_id": 1, "answer": "red"}] * 2))
    with pytest.raises(ValueError, match="two results"):
        score_vqa_results(qp, ap, rp)
