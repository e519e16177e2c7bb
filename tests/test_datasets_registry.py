"""The loader registry: names, splits and options are checked before any data is read."""

from __future__ import annotations

import pytest

from tasks.base import Dataset
from tasks.datasets import LOADERS, get_loader, load_dataset

EXPECTED = {
    "photos", "world", "flickr8k", "coco_captions", "vqa",
    "hub_coco_karpathy", "hub_flickr30k", "hub_nocaps", "hub_vqav2", "hub_okvqa",
    "hub_aokvqa", "hub_textvqa", "hub_vizwiz", "hub_scienceqa",
}


def test_all_builtin_loaders_are_registered() -> None:
    assert EXPECTED <= set(LOADERS)
    assert "mmbench" not in LOADERS  # the name belongs to another benchmark


def test_unknown_loader_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset loader 'nope'.*photos"):
        load_dataset("nope", "test", {})


def test_bad_split_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"no split 'dev'; valid splits: \['train', 'val', 'test'\]"):
        load_dataset("world", "dev", {"n_images": 1})


def test_unknown_option_names_the_valid_keys() -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("world", "test", {"n_imagez": 3})
    msg = str(err.value)
    assert "n_imagez" in msg and "n_images" in msg and "seed" in msg


def test_invalid_option_value_is_reported_with_its_key() -> None:
    with pytest.raises(ValueError, match="n_images"):
        load_dataset("world", "test", {"n_images": 0})
    with pytest.raises(ValueError, match="task"):
        load_dataset("photos", "test", {"task": "binding"})


def test_loader_is_callable_with_keyword_options_and_reports_provenance() -> None:
    ds = LOADERS["world"]("val", n_images=2, seed=3)
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.split) == ("world/caption", "val")
    assert "seed=3" in ds.source and ds.license
    assert get_loader("world") is LOADERS["world"]
