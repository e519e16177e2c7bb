"""The official VQA format, on the shared real VQAv2 fixture and on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tasks.datasets import load_dataset
from tasks.datasets._common import ImageLoadError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = DATA / "vqav2-tiny"
needs_data = pytest.mark.skipif(not TINY.is_dir(), reason=f"shared VQAv2 fixture not present at {TINY}")
TINY_OPTS = {"root": str(TINY), "questions": "questions.json", "annotations": "annotations.json", "images_dir": "images"}


@needs_data
def test_real_vqav2_fixture_loads_questions_answers_and_image() -> None:
    ds = load_dataset("vqa", "train", TINY_OPTS)
    assert len(ds) == 3
    first = ds.samples[0]
    assert first.sample_id == "vqav2/458752000"
    assert first.question == "What is this photo taken looking through?"
    assert first.answers == ("net", "net", "net", "netting", "net", "net", "mesh", "net", "pitcher", "orange")
    assert first.gold_text == "net"
    assert first.image_ref.endswith("COCO_train2014_000000458752.jpg")
    assert first.load_image().mode == "RGB"
    assert len({s.image_ref for s in ds.samples}) == 1
    assert all(len(s.answers) == 10 for s in ds.samples)
    assert "CC BY 4.0" in ds.license


def _write(root: Path, *, with_extra: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    qs = {"data_subtype": "val2014", "questions": [
        {"image_id": 5, "question": "What color is the car?", "question_id": 50},
        {"image_id": 6, "question": "How many cats?", "question_id": 60},
    ]}
    ann = {"annotations": [
        {"question_id": 50, "image_id": 5, "answers": [{"answer": "red", "answer_confidence": "yes", "answer_id": i} for i in range(10)],
         "answer_type": "other", "question_type": "what color is the", "multiple_choice_answer": "red"},
        {"question_id": 60, "image_id": 6, "answers": [{"answer": a} for a in ["2", "two"] * 5], "answer_type": "number"},
    ]}
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(qs))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(ann))
    (root / "val2014").mkdir(exist_ok=True)
    Image.new("RGB", (5, 5), (9, 9, 9)).save(root / "val2014" / "COCO_val2014_000000000005.jpg")
    return root


def test_default_file_names_fields_and_missing_image(tmp_path: Path) -> None:
    ds = load_dataset("vqa", "val", {"root": str(_write(tmp_path))})
    car, cats = ds.samples
    assert car.meta["answer_type"] == "other" and car.meta["multiple_choice_answer"] == "red"
    assert cats.answers.count("two") == 5 and cats.meta["answer_type"] == "number"
    assert car.load_image().size == (5, 5)
    with pytest.raises(ImageLoadError, match="COCO_val2014_000000000006.jpg"):
        cats.load_image()


def test_questions_without_annotations(tmp_path: Path) -> None:
    root = _write(tmp_path)
    ds = load_dataset("vqa", "val", {"root": str(root), "annotations": None})
    assert all(s.answers == () for s in ds.samples)
    ann_path = root / "v2_mscoco_val2014_annotations.json"
    doc = json.loads(ann_path.read_text())
    doc["annotations"].pop()
    ann_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="1 question\\(s\\) .* have no annotation"):
        load_dataset("vqa", "val", {"root": str(root)})


def test_image_template_is_restricted_and_mismatched_image_ids_fail(tmp_path: Path) -> None:
    root = _write(tmp_path)
    with pytest.raises(ValueError, match="image_template"):
        load_dataset("vqa", "val", {"root": str(root), "image_template": "{image_id.__class__}.jpg"})
    ds = load_dataset("vqa", "val", {"root": str(root), "image_template": "{image_id}.png", "images_dir": "imgs"})
    assert ds.samples[0].image_ref.endswith("imgs/5.png")
    ann_path = root / "v2_mscoco_val2014_annotations.json"
    doc = json.loads(ann_path.read_text())
    doc["annotations"][0]["image_id"] = 99
    ann_path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="annotation says 99"):
        load_dataset("vqa", "val", {"root": str(root)})
