"""The embedded real-photo suite: every image loads offline, annotations are complete, splits are by image."""

from __future__ import annotations

import pytest
from PIL import Image

from tasks.datasets import load_dataset
from tasks.datasets import photos
from tasks.datasets._common import ImageLoadError


def test_every_annotated_image_loads_offline_as_rgb() -> None:
    ds = load_dataset("photos", "all", {"task": "caption"})
    assert len(ds) >= 16
    for s in ds.samples:
        img = s.load_image()
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert min(img.size) >= 150, s.sample_id


def test_captions_and_questions_are_complete() -> None:
    caps = load_dataset("photos", "all", {"task": "caption"})
    for s in caps.samples:
        assert len(s.references) == 5 and len(set(s.references)) == 5
        assert all(r.strip() and r[0].isupper() for r in s.references)
    vqa = load_dataset("photos", "all", {"task": "vqa"})
    per_image: dict[str, int] = {}
    for s in vqa.samples:
        assert s.question.endswith("?") and len(s.answers) == 10
        assert s.meta["answer_type"] in ("yes/no", "number", "other")
        if s.meta["answer_type"] == "yes/no":
            assert set(s.answers) <= {"yes", "no"}
        per_image[s.image_ref] = per_image.get(s.image_ref, 0) + 1
    assert set(per_image) == {s.image_ref for s in caps.samples}
    assert all(3 <= n <= 5 for n in per_image.values())
    # human-style disagreement exists somewhere, and number words appear beside digits
    assert any(len(set(s.answers)) > 1 for s in vqa.samples)
    assert any("two" in s.answers or "one" in s.answers for s in vqa.samples)


def test_train_and_test_are_disjoint_by_image_and_cover_all() -> None:
    train = load_dataset("photos", "train", {"task": "vqa"})
    test = load_dataset("photos", "test", {"task": "vqa"})
    every = load_dataset("photos", "all", {"task": "vqa"})
    assert not {s.image_ref for s in train.samples} & {s.image_ref for s in test.samples}
    assert {s.sample_id for s in train.samples} | {s.sample_id for s in test.samples} == {s.sample_id for s in every.samples}
    assert len(train) >= 10 and len(test) >= 20
    assert "scikit-image" in test.source and "written for mmbench" in test.source


def test_sklearn_photos_are_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(photos, "_sklearn_available", lambda: False)
    ds = load_dataset("photos", "all", {"task": "caption"})
    assert not any("sklearn" in s.image_ref for s in ds.samples)
    assert "scikit-learn" not in ds.source


def test_a_broken_image_fails_only_when_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import skimage.data

    with pytest.raises(ImageLoadError, match="no image 'not_an_image'"):
        photos._skimage_image("not_an_image", None)

    def offline() -> None:
        raise ModuleNotFoundError("requires the installation of an optional dependency, pooch")

    monkeypatch.setattr(skimage.data, "coffee", offline)
    ds = load_dataset("photos", "train", {"task": "caption"})  # building the dataset does not touch images
    coffee = next(s for s in ds.samples if s.sample_id == "photos/coffee")
    with pytest.raises(ImageLoadError, match=r"skimage.data.coffee\(\) failed"):
        coffee.load_image()
