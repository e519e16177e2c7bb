"""`mmbench score` on files in the official formats prints the official numbers under official keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.metrics.tokenize import find_java

GOLDEN = Path(__file__).parent / "golden"


def _score(*args: str, stderr: list[str] | None = None) -> dict:
    r = subprocess.run([sys.executable, "-m", "harness.cli", "score", *args, "--json", "--bootstrap", "50"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    if stderr is not None:
        stderr.append(r.stderr)
    return json.loads(r.stdout)


@pytest.mark.skipif(find_java() is None, reason="java is not installed: the official PTB/METEOR path needs it")
@pytest.mark.slow
def test_score_captioning_json_equals_pycocoevalcap(tmp_path):
    s = json.loads((GOLDEN / "caption_golden.json").read_text())["synthetic"]
    ids = {k: n for n, k in enumerate(s["references"], start=1)}
    ann = {"images": [{"id": n, "file_name": f"{n}.jpg"} for n in ids.values()],
           "annotations": [{"image_id": ids[k], "id": 10 * ids[k] + j, "caption": c}
                           for k, caps in s["references"].items() for j, c in enumerate(caps)]}
    res = [{"image_id": ids[k], "caption": p} for k, p in s["predictions"].items()]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps(res))
    out = _score("captioning", "--annotations", str(tmp_path / "ann.json"), "--predictions", str(tmp_path / "res.json"))
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert out[key] == pytest.approx(s["expected"][key], abs=1e-4), key
        lo, hi = out["ci"][key]
        assert lo <= hi
    assert "SPICE" in out["unavailable"] and "SPICE" not in out  # never reported as 0


@pytest.mark.slow
def test_score_vqa_json_equals_official_evaluation(tmp_path):
    g = json.loads((GOLDEN / "vqa_golden.json").read_text())
    cases = g["cases"]
    questions = {"questions": [{"question_id": c["question_id"], "image_id": 1, "question": "q?"} for c in cases]}
    annotations = {"annotations": [
        {"question_id": c["question_id"], "image_id": 1, "answer_type": c["answer_type"],
         "question_type": c["question_type"], "multiple_choice_answer": c["answers"][0],
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(c["answers"])]}
        for c in cases]}
    results = [{"question_id": c["question_id"], "answer": c["prediction"]} for c in cases]
    for name, obj in (("q.json", questions), ("a.json", annotations), ("r.json", results)):
        (tmp_path / name).write_text(json.dumps(obj))
    files = ("--questions", str(tmp_path / "q.json"), "--annotations", str(tmp_path / "a.json"),
             "--predictions", str(tmp_path / "r.json"))
    empty = [c for c in cases if not c["prediction"].strip()]
    unanimous = [c for c in cases if len(set(c["answers"])) == 1]
    assert len(empty) >= 5 and len(unanimous) >= 8  # the golden holds the cases the CLI must get right
    for mode, args in (("vqaeval", ()), ("vqaeval", ("--mode", "vqaeval")), ("evalai", ("--mode", "evalai"))):
        err: list[str] = []
        out = _score("vqa", *files, *args, stderr=err)
        official = g["aggregate"][mode]
        assert round(out["overall"], 2) == official["overall"], mode
        for t, v in official["perAnswerType"].items():
            assert round(out[f"perAnswerType/{t}"], 2) == v
        assert out["info"]["mode"] == mode and f"mode: {mode}" in err[0]
    r = subprocess.run([sys.executable, "-m", "harness.cli", "score", "vqa", *files, "--mode", "lenient"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "vqaeval" in r.stderr
