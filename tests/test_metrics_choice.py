"""Multiple-choice matching/accuracy and normalised exact match (fast binding)."""

from __future__ import annotations

import pytest
from PIL import Image

from tasks.base import Sample
from tasks.metrics import METRICS, exact_match, match_choice, score_choice, score_exact

CHOICES = ("a cat", "two dogs", "the moon")


@pytest.mark.parametrize("pred,expected", [
    ("two dogs", 1), ("Two Dogs.", 1), ('"the moon"', 2), ("  a   cat ", 0),
    ("B", 1), ("(C)", 2), ("a.", 0), ("B)", 1), ("c:", 2), ("(B) two dogs", 1), ("B. two dogs", 1),
    ("(B) the moon", None), ("D", None), ("dogs", None), ("", None), ("   ", None), ("The answer is B", None),
    (0, 0), (2, 2), (3, None), (-1, None),
])
def test_match_choice_rule(pred, expected):
    assert match_choice(pred, CHOICES) == expected


def test_choice_text_wins_over_letter_and_duplicates_are_ambiguous():
    assert match_choice("b", ("a", "b")) == 1          # the text "b" is choice 1 (also letter B)
    assert match_choice("A", ("b", "a")) == 1          # text first: "A" is the text of choice 1, not letter A
    assert match_choice("yes", ("yes", "Yes.", "no")) is None
    with pytest.raises(TypeError):
        match_choice(True, CHOICES)


def test_score_choice_accuracy_ci_and_failures():
    choices = [CHOICES] * 4
    r = score_choice(choices, [1, 2, 0, 1], ["B", "the moon", "", "a cat"], n_boot=200, seed=0)
    assert r.values["accuracy"] == 50.0 and r.primary == "accuracy"
    assert r.per_sample["accuracy"] == [100.0, 100.0, 0.0, 0.0]
    assert r.info["n_unmatched"] == "1"
    lo, hi = r.ci["accuracy"]
    assert 0.0 <= lo < 50.0 < hi <= 100.0
    assert score_choice(choices, [1, 2, 0, 1], ["B", "the moon", "", "a cat"], n_boot=200, seed=0).ci == r.ci
    with pytest.raises(ValueError, match="gold index"):
        score_choice([CHOICES], [3], ["B"])
    with pytest.raises(ValueError, match="lengths"):
        score_choice([CHOICES], [0, 1], ["B"])


def test_exact_match_uses_the_vqa_normaliser():
    assert exact_match("Dax.", "dax") and exact_match("the dax", "dax") and exact_match(" DAX ", "dax")
    assert not exact_match("blicket", "dax") and not exact_match("it is a dax", "dax")
    assert not exact_match("", "the")  # an empty (failed) prediction never matches
    assert exact_match("wug", ["dax", "wug"])
    r = score_exact(["dax", "wug", "fep"], ["Dax!", "", "a fep"], n_boot=100)
    assert r.values["exact_match"] == pytest.approx(200 / 3) and r.per_sample["exact_match"] == [100.0, 0.0, 100.0]


def _sample(**kw) -> Sample:
    return Sample(sample_id="s", image_ref="none", load_image=lambda: Image.new("RGB", (2, 2)), **kw)


def test_metrics_registry_choice_and_exact():
    mc = [_sample(choices=CHOICES, answer_index=1), _sample(choices=CHOICES, answer_index=0)]
    r = METRICS["choice_accuracy"](mc, ["(B)", "the moon"], n_boot=50, seed=0)
    assert r.per_sample["accuracy"] == [100.0, 0.0]
    binding = [_sample(answers=("dax",)), _sample(answers=("wug",))]
    r = METRICS["exact_match"](binding, ["dax", "Wug."], n_boot=50, seed=0)
    assert r.values["exact_match"] == 100.0
    with pytest.raises(ValueError):
        METRICS["exact_match"]([_sample()], ["dax"], n_boot=10, seed=0)
    assert set(METRICS) == {"caption", "vqa_accuracy", "choice_accuracy", "exact_match"}
