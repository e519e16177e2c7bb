"""Regenerate ``vqa_golden.json`` by running the official VQA evaluation code beside mmbench.

Reference side of the VQA golden tests; it does NOT use mmbench. Point it at a checkout of
https://github.com/GT-Vision-Lab/VQA (Python 2 code): the two files are loaded from a temporary
copy with their ``print`` statements turned into calls, nothing else changed.

    python tests/golden/make_vqa_golden.py /path/to/GT-Vision-Lab/VQA

Expected values per case: ``vqaeval`` = the official script as is; ``evalai`` = the official script
fed the prediction after the official normalisation (processPunctuation + processDigitArticle), as
the EvalAI server / MMF / lmms-eval do. The answers and predictions were written for mmbench; for
the real VQAv2 fixture only question ids, predictions and numbers are stored.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = HERE.parents[1].parent / "shared" / "data" / "vqav2-tiny"

T = ["black"] * 7 + ["dark"] * 3
CASES: list[tuple[str, list[str], str]] = [
    ("Black.", ["black"] * 10, "trailing period, unanimous humans"),
    ("black", ["black"] * 10, "plain match"),
    ("Black.", T, "trailing period, humans disagree"),
    ("BLACK", T, "case, humans disagree"),
    ("Yes", ["yes"] * 10, "capitalised yes, unanimous"),
    ("yes.", ["yes"] * 9 + ["no"], "yes with period"),
    ("a dog", ["dog"] * 6 + ["puppy"] * 4, "article"),
    ("the dog", ["dog"] * 10, "article, unanimous"),
    ("two", ["2"] * 5 + ["3"] * 5, "number word"),
    ("2", ["two"] * 4 + ["2"] * 2 + ["3"] * 4, "digit vs number words in the human answers"),
    ("dont know", ["don't know"] * 4 + ["no"] * 6, "contraction"),
    ("1,000", ["1000"] * 3 + ["1,000"] * 2 + ["100"] * 5, "comma between digits"),
    ("1,000", ["1000"] * 10, "comma between digits, unanimous"),
    ("red", ["red"] * 2 + ["blue"] * 8, "two of ten humans"),
    ("red", ["red"] + ["blue"] * 9, "one of ten humans"),
    ("3.5", ["3.5"] * 4 + ["3"] * 6, "decimal point kept"),
    ("t-shirt", ["t shirt"] * 4 + ["shirt"] * 6, "hyphen becomes a space"),
    ("a/b", ["b"] * 3 + ["c"] * 7, "slash becomes a space, then 'a' is an article"),
    ("  red\n", ["red"] * 5 + ["pink"] * 5, "surrounding whitespace"),
    ("None", ["none"] * 5 + ["0"] * 5, "'none' maps to 0"),
    ("u.s.a.", ["usa"] * 4 + ["america"] * 6, "periods not before digits are removed"),
    ("x, y", ["x y"] * 4 + ["xy"] * 6, "comma next to a space is deleted"),
    ("it's a cat", ["it's cat"] * 3 + ["cat"] * 7, "article inside"),
    ("Couldnt", ["couldn't"] * 5 + ["no"] * 5, "contraction with capital"),
    ("", ["yes"] * 5 + ["no"] * 5, "empty prediction"),
    ("café", ["café"] * 6 + ["cafe"] * 4, "non-ASCII"),
    ("yes", ["yes", "yes", "no"], "three human answers"),
    ("Yes!", ["Yes!"] * 10, "unnormalised unanimous humans"),
    ("", [""] * 10, "empty prediction, unanimous empty humans"),
    ("", [""] * 3 + ["yes"] * 7, "empty prediction, three humans left it empty"),
    ("", [""] + ["yes"] * 9, "empty prediction, one human left it empty"),
    ("", ["the"] * 4 + ["a"] * 6, "empty prediction, human answers normalise to empty"),
    ("  \n", [""] * 10, "whitespace-only prediction, unanimous empty humans"),
    ("yes", [""] * 2 + ["yes"] * 8, "two humans left it empty"),
    ("The", ["the"] * 10, "article only, unanimous"),
    ("no", ["no"] * 10, "plain match, unanimous"),
]
NORMALISATION_INPUTS = [
    "Black.", "YES", "yes.", "a dog", "The Dog", "An apple", "two", "Ten", "none", "dont", "Dont", "isnt it",
    "1,000", "1,000,000 dollars", "3.5", "3.", "u.s.", "t-shirt", "x, y", "x ,y", "a/b", "(left)", "left (maybe)",
    "hello!", "what?", "50%", "$5", "no. 5", "e.g. this", "5 ft. 2 in.", "snow-board", "on/off", "it's",
    "somebody'd", "ow's'at", "  spaced   out  ", "tab\there", "new\nline", "Mr. Smith", "#1", "a-b-c", "_under_",
    "back\\slash", "<tag>", "@home", "`tick`", "=x+y", "one two three", "Im", "the the a an",
]
TINY_PREDICTIONS = {
    "A": {"458752000": "Net.", "458752001": "the pitcher", "458752002": "Orange."},
    "B": {"458752000": "mesh", "458752001": "Catcher", "458752002": "orange"},
}


def _load_official(repo: Path, tmp: Path) -> tuple[type, type]:
    """Import vqa.py and vqaEval.py from a temporary Python-3 copy (print statements made calls)."""
    sources = {"vqa": repo / "PythonHelperTools" / "vqaTools" / "vqa.py",
               "vqaEval": repo / "PythonEvaluationTools" / "vqaEvaluation" / "vqaEval.py"}
    modules = {}
    for name, src in sources.items():
        text = src.read_text(encoding="utf-8")
        text = "\n".join(re.sub(r"^(\s*)print (.*)$", r"\1print(\2)", line) for line in text.splitlines())
        text = text.expandtabs(4) if name == "vqa" else text
        dst = tmp / f"{name}.py"
        dst.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(name, dst)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        modules[name] = mod
    return modules["vqa"].VQA, modules["vqaEval"].VQAEval


def _run(VQA: type, VQAEval: type, tmp: Path, questions: dict, annotations: dict, results: list) -> dict:
    paths = {}
    for name, data in (("q", questions), ("a", annotations), ("r", results)):
        paths[name] = tmp / f"{name}.json"
        paths[name].write_text(json.dumps(data), encoding="utf-8")
    vqa = VQA(str(paths["a"]), str(paths["q"]))
    res = vqa.loadRes(str(paths["r"]), str(paths["q"]))
    ev = VQAEval(vqa, res, n=2)
    ev.evaluate()
    return {"accuracy": ev.accuracy, "evalQA": {str(k): v for k, v in ev.evalQA.items()}}


def _files(items: list[tuple[int, list[str], str, str]]) -> tuple[dict, dict]:
    header = {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014"}
    questions = dict(header, questions=[{"question_id": q, "image_id": 1, "question": "?"} for q, *_ in items])
    annotations = dict(header, annotations=[
        {"question_id": q, "image_id": 1, "answer_type": at, "question_type": qt, "multiple_choice_answer": a[0],
         "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1} for k, x in enumerate(a)]}
        for q, a, at, qt in items])
    return questions, annotations


def main(repo: Path) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        VQA, VQAEval = _load_official(repo, tmp)
        ev = VQAEval.__new__(VQAEval)
        VQAEval.__init__(ev, type("Empty", (), {"getQuesIds": lambda self: []})(), None)

        def official_norm(s: str) -> str:
            s = s.replace("\n", " ").replace("\t", " ").strip()
            return ev.processDigitArticle(ev.processPunctuation(s))

        types = ["yes/no", "other", "number"]
        qtypes = ["what color is", "is the", "how many"]
        items = [(1000 + k, a, types[k % 3], qtypes[k % 3]) for k, (_, a, _) in enumerate(CASES)]
        questions, annotations = _files(items)
        preds = [p for p, _, _ in CASES]
        raw = _run(VQA, VQAEval, tmp, questions, annotations,
                   [{"question_id": q, "answer": p} for (q, *_), p in zip(items, preds)])
        questions, annotations = _files(items)
        pre = _run(VQA, VQAEval, tmp, questions, annotations,
                   [{"question_id": q, "answer": official_norm(p)} for (q, *_), p in zip(items, preds)])
        cases = [{"question_id": q, "prediction": p, "answers": a, "answer_type": at, "question_type": qt,
                  "note": note, "expected_vqaeval": raw["evalQA"][str(q)], "expected_evalai": pre["evalQA"][str(q)]}
                 for (q, a, at, qt), (p, _, note) in zip(items, CASES)]
        norms = {s: official_norm(s) for s in NORMALISATION_INPUTS}
        twice = {s: official_norm(official_norm(s)) for s in NORMALISATION_INPUTS}

        tiny = {}
        if TINY.exists():
            q = json.loads((TINY / "questions.json").read_text(encoding="utf-8"))
            a = json.loads((TINY / "annotations.json").read_text(encoding="utf-8"))
            image_of = {x["question_id"]: x["image_id"] for x in q["questions"]}
            for ann in a["annotations"]:  # the official code needs these keys; the tiny fixture lacks them
                ann.setdefault("image_id", image_of[ann["question_id"]])
                ann.setdefault("answer_type", "unknown")
                ann.setdefault("question_type", "unknown")
            for name, pr in TINY_PREDICTIONS.items():
                out = {}
                for mode, f in (("vqaeval", lambda s: s), ("evalai", official_norm)):
                    r = _run(VQA, VQAEval, tmp, q, a, [{"question_id": int(k), "answer": f(v)} for k, v in pr.items()])
                    out[mode] = {"overall": r["accuracy"]["overall"], "evalQA": r["evalQA"]}
                tiny[name] = {"predictions": pr, "expected": out}

    golden = {
        "generator": "tests/golden/make_vqa_golden.py with GT-Vision-Lab/VQA vqaEval.py (rounds to 2 decimals)",
        "cases": cases,
        "aggregate": {"vqaeval": raw["accuracy"], "evalai": pre["accuracy"]},
        "normalization": norms,
        "normalization_twice": twice,
        "vqav2_tiny": tiny,
    }
    (HERE / "vqa_golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
