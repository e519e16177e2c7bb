"""Flickr8k (Kaggle layout): image-level hash split, lazy failing images, path safety, real-data checks."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from PIL import Image

from tasks.datasets import caption_text_corpus, load_dataset
from tasks.datasets._common import ImageLoadError
from tasks.datasets.flickr8k import read_caption_csv

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FLICKR = DATA / "flickr8k-subset"
needs_data = pytest.mark.skipif(not FLICKR.is_dir(), reason=f"shared Flickr8k subset not present at {FLICKR}")


def _write(root: Path, rows: list[tuple[str, str]], images: list[str]) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in images:
        Image.new("RGB", (8, 6), (10, 200, 30)).save(root / "images" / name)
    with (root / "captions.txt").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return root


def _rows(n_images: int) -> list[tuple[str, str]]:
    return [(f"img{i:03d}.jpg", f"A caption {j}, with a comma, of image {i} .") for i in range(n_images) for j in range(5)]


def test_split_is_by_image_and_independent_of_row_order(tmp_path: Path) -> None:
    rows = _rows(80)
    a = _write(tmp_path / "a", rows, [])
    b = _write(tmp_path / "b", list(reversed(rows)), [])
    splits = {}
    for name, root in (("a", a), ("b", b)):
        splits[name] = {sp: [s.sample_id for s in load_dataset("flickr8k", sp, {"root": str(root)}).samples]
                        for sp in ("train", "val", "test")}
    assert splits["a"] == splits["b"]
    ids = [i for sp in splits["a"].values() for i in sp]
    assert len(ids) == len(set(ids)) == 80  # every image in exactly one split
    assert 0 < len(splits["a"]["test"]) < 30 and len(splits["a"]["train"]) > 40
    full = load_dataset("flickr8k", "all", {"root": str(a)})
    assert all(len(s.references) == 5 for s in full.samples)
    assert full.samples[0].references[0] == "A caption 0, with a comma, of image 0 ."
    other_seed = {s.sample_id for s in load_dataset("flickr8k", "test", {"root": str(a), "split_seed": 1}).samples}
    assert other_seed != set(splits["a"]["test"])


def test_missing_image_is_kept_counted_and_fails_on_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write(tmp_path, _rows(3), ["img000.jpg", "img002.jpg"])
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("flickr8k", "all", {"root": str(root)})
    assert len(ds) == 3
    assert "1 of 3 images" in caplog.text
    by_id = {s.sample_id: s for s in ds.samples}
    assert by_id["flickr8k/img000.jpg"].load_image().size == (8, 6)
    assert by_id["flickr8k/img001.jpg"].meta["image_missing"] is True
    with pytest.raises(ImageLoadError, match="image file not found: .*img001.jpg"):
        by_id["flickr8k/img001.jpg"].load_image()


@pytest.mark.parametrize("bad", ["../secret.jpg", "/etc/passwd", "a/../../b.jpg", "C:\\x.jpg"])
def test_paths_escaping_the_root_are_rejected(tmp_path: Path, bad: str) -> None:
    root = _write(tmp_path, [("ok.jpg", "fine ."), (bad, "evil .")], ["ok.jpg"])
    with pytest.raises(ValueError, match="captions.txt:3"):
        load_dataset("flickr8k", "all", {"root": str(root)})


def test_wrong_header_and_missing_root_are_clear(tmp_path: Path) -> None:
    (tmp_path / "captions.txt").write_text("file|text\nx.jpg|y\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a CSV header 'image,caption'"):
        load_dataset("flickr8k", "all", {"root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_dataset("flickr8k", "all", {"root": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("flickr8k", "all", {"root": str(tmp_path), "val_fraction": 0.5, "test_fraction": 0.5})


@needs_data
def test_real_subset_loads_with_every_image_present() -> None:
    ds = load_dataset("flickr8k", "all", {"root": str(FLICKR)})
    assert len(ds) == 798 and sum(len(s.references) for s in ds.samples) == 3990
    assert not any(s.meta["image_missing"] for s in ds.samples)
    assert ds.samples[0].load_image().mode == "RGB"
    sizes = {sp: len(load_dataset("flickr8k", sp, {"root": str(FLICKR)})) for sp in ("train", "val", "test")}
    assert sum(sizes.values()) == 798 and 60 < sizes["test"] < 150
    assert "research use" in ds.license and ds.source == str(FLICKR)


@needs_data
def test_caption_text_corpus_reads_the_text_only_captions() -> None:
    corpus = caption_text_corpus(FLICKR)
    assert len(corpus) == 35455 and all(isinstance(c, str) and c for c in corpus)
    ds = load_dataset("flickr8k", "all", {"root": str(FLICKR)})
    text_images = {image for _, image, _ in read_caption_csv(FLICKR / "captions_text_only.txt")}
    assert not text_images & {s.sample_id.split("/", 1)[1] for s in ds.samples}  # captions of other images
    shared = {r for s in ds.samples for r in s.references} & set(corpus)
    assert all(len(c.split()) <= 12 for c in shared)  # only short generic sentences coincide
