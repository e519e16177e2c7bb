"""COCO captions: the official JSON and the Karpathy split JSON, on small files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tasks.datasets import load_dataset
from tasks.datasets._common import ImageLoadError


def _image(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 9), colour).save(path)


def _coco(root: Path) -> Path:
    doc = {
        "images": [
            {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"},  # no caption: left out
        ],
        "annotations": [
            {"image_id": 42, "id": 1, "caption": "A dog on a couch. "},
            {"image_id": 7, "id": 2, "caption": "A red bus."},
            {"image_id": 42, "id": 3, "caption": "A puppy resting."},
        ],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(doc))
    _image(root / "val2014" / "COCO_val2014_000000000042.jpg")
    return root


def test_official_format_groups_captions_by_image(tmp_path: Path) -> None:
    ds = load_dataset("coco_captions", "val", {"root": str(_coco(tmp_path))})
    assert [s.sample_id for s in ds.samples] == ["coco_captions/7", "coco_captions/42"]
    dog = ds.samples[1]
    assert dog.references == ("A dog on a couch.", "A puppy resting.")
    assert dog.load_image().size == (12, 9)
    with pytest.raises(ImageLoadError, match="COCO_val2014_000000000007.jpg"):
        ds.samples[0].load_image()
    assert ds.split == "val" and "coco" in ds.source


def test_official_format_rejects_bad_annotations(tmp_path: Path) -> None:
    root = _coco(tmp_path)
    path = root / "annotations" / "captions_val2014.json"
    doc = json.loads(path.read_text())
    doc["annotations"].append({"image_id": 1234, "caption": "orphan"})
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unknown image_id 1234"):
        load_dataset("coco_captions", "val", {"root": str(root)})
    doc["annotations"].pop()
    doc["images"][0]["file_name"] = "../../outside.jpg"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="escapes the dataset root"):
        load_dataset("coco_captions", "val", {"root": str(root)})
    with pytest.raises(FileNotFoundError, match="captions_train2014.json"):
        load_dataset("coco_captions", "train", {"root": str(root)})


def _karpathy(root: Path) -> Path:
    def entry(i: int, split: str, filepath: str | None = "val2014") -> dict:
        e = {"cocoid": i, "imgid": i, "split": split, "filename": f"img{i}.jpg",
             "sentences": [{"raw": f"Caption {k} of image {i}.", "tokens": []} for k in range(5)]}
        if filepath is not None:
            e["filepath"] = filepath
        return e

    doc = {"dataset": "coco", "images": [entry(1, "test"), entry(2, "train", "train2014"), entry(3, "restval"),
                                         entry(4, "val"), entry(5, "test")]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_coco.json").write_text(json.dumps(doc))
    _image(root / "val2014" / "img1.jpg", (1, 2, 3))
    return root


def test_karpathy_format_selects_the_split(tmp_path: Path) -> None:
    root = _karpathy(tmp_path)
    opts = {"root": str(root), "format": "karpathy"}
    test = load_dataset("coco_captions", "test", opts)
    assert [s.sample_id for s in test.samples] == ["coco_captions/1", "coco_captions/5"]
    assert test.samples[0].references[0] == "Caption 0 of image 1."
    pixel = test.samples[0].load_image().getpixel((0, 0))
    assert max(abs(a - b) for a, b in zip(pixel, (1, 2, 3))) <= 3  # JPEG is lossy
    train = load_dataset("coco_captions", "train", opts)
    assert [s.meta["karpathy_split"] for s in train.samples] == ["train", "restval"]
    assert train.samples[0].image_ref.endswith("train2014/img2.jpg")
    strict = load_dataset("coco_captions", "train", {**opts, "restval_in_train": False})
    assert len(strict) == 1
    assert len(load_dataset("coco_captions", "restval", opts)) == 1


def test_karpathy_flickr30k_layout_without_filepath(tmp_path: Path) -> None:
    doc = {"images": [{"imgid": 0, "split": "test", "filename": "1000092795.jpg",
                       "sentences": [{"raw": "Two young guys ."}]}]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(doc))
    _image(tmp_path / "flickr30k-images" / "1000092795.jpg")
    ds = load_dataset("coco_captions", "test", {"root": str(tmp_path), "format": "karpathy",
                                                "annotations": "dataset_flickr30k.json",
                                                "images_dir": "flickr30k-images", "dataset_name": "flickr30k"})
    assert ds.name == "flickr30k" and ds.samples[0].load_image().size == (12, 9)


def test_restval_needs_karpathy_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="restval"):
        load_dataset("coco_captions", "restval", {"root": str(_coco(tmp_path))})


def test_repeated_image_id_with_different_file_is_an_error(tmp_path):
    import json

    import pytest

    from tasks.datasets import load_dataset

    (tmp_path / "images").mkdir()
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
        "annotations": [{"image_id": 1, "caption": "a cat"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="repeats id 1"):
        load_dataset("coco_captions", "test", {"root": str(tmp_path), "annotations": "ann.json", "images_dir": "images"})
