"""ScienceQA as its authors ran it: the paper's QCM→A / QCM→ALE prompts, the answer read from
"The answer is X.", the paper's breakdown columns — and end to end with the packaged LLM on a
fixture in the released format."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from paradigms.text_conversion.scienceqa import context_text, example_block, extract_letter
from tasks.base import MetricResult, Sample
from tasks.metrics.breakdowns import breakdown, scienceqa_groups
from tests import benchmark_fixtures as fx


@pytest.mark.parametrize(
    "output, letter",
    [
        ("The answer is A.", "A"),  # the demonstrations' own form
        ("The answer is (B).", "B"),  # what instruction-tuned models often write
        ("The answer is C. BECAUSE: A magnet attracts iron.\\nThe nail is iron.", "C"),  # QCM→ALE
        ("The answer is B", "B"),  # cut off by the token budget
        ("The answer is (D) because it is hot.", "D"),
        ("Let me think. The answer is A.", "A"),
        ("B", None),  # a bare letter is not the format: the authors' scorer does not read it
        ("The answer is Because the sun is hot.", None),  # not the letter B
        ("The answer is A. Wait. The answer is B.", None),  # two statements: unparsed, as in the authors' scorer
        ("the answer is a.", None),  # case matters, as in theirs
        ("", None),
    ],
)
def test_answer_extraction_on_realistic_outputs(output: str, letter: str | None) -> None:
    assert extract_letter(output) == letter


def test_prompt_blocks_follow_the_paper_layout() -> None:
    demo = example_block("QCM-ALE", "Which is a mammal?", context_text("Look at the picture.", "a whale in the sea"),
                         ["whale", "shark"], "A", "Mammals have fur.\nThey feed milk.", "A whale is a mammal.")
    assert demo == (
        "Question: Which is a mammal?\nContext: Look at the picture. a whale in the sea\n"
        "Options: (A) whale (B) shark\n"
        "Answer: The answer is A. BECAUSE: Mammals have fur.\\nThey feed milk. A whale is a mammal."
    )
    short = example_block("QCM-A", "Which is hot?", context_text("", ""), ["ice", "fire", "snow"], "B")
    assert short == "Question: Which is hot?\nContext: N/A\nOptions: (A) ice (B) fire (C) snow\nAnswer: The answer is B."
    query = example_block("QCM-ALE", "Which is hot?", "N/A", ["ice", "fire"], None)
    assert query.endswith("Options: (A) ice (B) fire\nAnswer:")
    empty_because = example_block("QCM-ALE", "Q?", "N/A", ["a", "b"], "A", "", "")
    assert empty_because.endswith("Answer: The answer is A.")  # an empty explanation drops "BECAUSE:"


def _sqa(subject: str, grade: str, hint: str, has_image: bool) -> Sample:
    meta = {"subject": subject, "grade": grade, "hint": hint, "has_image": has_image}
    return Sample(f"{subject}{grade}{hint}{has_image}", "x", lambda: None, meta=meta)  # type: ignore[arg-type,return-value]


def test_breakdown_columns_match_the_paper_table() -> None:
    samples = [
        _sqa("natural science", "grade2", "", True),  # NAT IMG G1-6
        _sqa("social science", "grade8", "A map.", True),  # SOC TXT IMG G7-12
        _sqa("language science", "grade6", "", False),  # LAN NO G1-6
        _sqa("natural science", "grade12", "Read.", False),  # NAT TXT G7-12
    ]
    assert scienceqa_groups(samples[1]) == ["SOC", "TXT", "IMG", "G7-12"]
    result = MetricResult(values={"accuracy": 50.0}, per_sample={"accuracy": [100.0, 0.0, 100.0, 0.0]}, primary="accuracy")
    v = breakdown("scienceqa", samples, result).values
    assert v["accuracy_NAT"] == 50.0 and v["accuracy_SOC"] == 0.0 and v["accuracy_LAN"] == 100.0
    assert v["accuracy_TXT"] == 0.0 and v["accuracy_IMG"] == 50.0 and v["accuracy_NO"] == 100.0
    assert v["accuracy_G1-6"] == 100.0 and v["accuracy_G7-12"] == 0.0
    assert v["n_TXT"] == 2 and v["n_IMG"] == 2 and v["n_NO"] == 1


@pytest.mark.slow
def test_qcm_a_and_qcm_ale_end_to_end_with_the_packaged_llm(tmp_path) -> None:
    problems = fx.write_scienceqa(tmp_path / "scienceqa")
    conv = [{"kind": "tags"}]
    cfg = {
        "name": "scienceqa", "seed": 0, "batch_size": 4, "bootstrap": 0, "clipscore": False,
        "paradigms": [
            {"name": "text_conversion/scienceqa", "label": "sqa-A", "options": {"converters": conv, "prompt_format": "QCM-A"}},
            {"name": "text_conversion/scienceqa", "label": "sqa-ALE",
             "options": {"converters": conv, "prompt_format": "QCM-ALE", "answer_max_new_tokens": 40}},
        ],
        "tasks": [{"name": "scienceqa_local",
                   "dataset_options": {"root": str(tmp_path / "scienceqa"), "questions": "all"}}],
        "in_context": {"shots": [2]},
        "models": {"llm": {"source": "packaged", "name": "smollm2-135m-instruct"}, "scorer": {"kind": "tag-minilm"}},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--config", str(path), "--results-dir",
                           str(tmp_path / "r"), "--no-progress"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for p in (tmp_path / "r").glob("mlartifacts/**/predictions.jsonl")
            for line in p.read_text().splitlines() if line.strip()]
    assert len(rows) == 10  # 5 test questions (4 with an image, 1 text-only) x 2 formats
    for r in rows:
        assert r["error"] is None, r["error"]
        trace = r["trace"]
        prompt = trace["prompts"][0]
        blocks = prompt.split("\n\n")
        assert len(blocks) == 3 and blocks[-1].endswith("Answer:") and len(r["shots"]) == 2
        pid = r["sample_id"].split("/")[1]
        p = problems[pid]
        assert blocks[-1].startswith(f"Question: {p['question']}\nContext: ")
        if p["hint"]:
            assert f"Context: {p['hint']}" in blocks[-1]
        if p["image"] is None:  # a text-only question gets no caption
            assert f"Context: {p['hint'] or 'N/A'}\n" in blocks[-1]
        if trace["format"] == "QCM-ALE":
            assert all("BECAUSE: A lecture line.\\nAnother line. Look at the word." in b for b in blocks[:2])
        else:
            assert all(b.endswith(("The answer is A.", "The answer is B.", "The answer is C.")) for b in blocks[:2])
        parsed = trace["parsed"]
        assert parsed == extract_letter(trace["output"])
        if parsed is not None and ord(parsed) - 65 < len(p["choices"]):
            assert r["prediction"] == p["choices"][ord(parsed) - 65]
        else:
            assert trace["parse_errors"] == 1 and r["prediction"] in p["choices"]  # the authors' random pick
    csv = tmp_path / "r" / "runs" / "latest" / "results.csv"  # each run has its own folder; latest is this one
    frame = pd.read_csv(csv)
    for label in ("sqa-A", "sqa-ALE"):
        mine = frame[frame["paradigm"] == label].set_index("metric")["value"]
        for col in ("accuracy_NAT", "accuracy_SOC", "accuracy_LAN", "accuracy_TXT", "accuracy_IMG", "accuracy_NO",
                    "accuracy_G1-6", "accuracy_G7-12"):
            assert col in mine.index, (label, col)
        assert mine["n_IMG"] == 4 and mine["n_NAT"] + mine["n_SOC"] + mine["n_LAN"] == 5
