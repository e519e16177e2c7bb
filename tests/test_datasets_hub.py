"""Hub loaders, tested offline: tiny datasets in each hub schema are written to local parquet files or
``save_to_disk`` folders and read through the same ``datasets.load_dataset`` code path."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from tasks.datasets import LOADERS, load_dataset
from tasks.datasets._common import ImageLoadError
from tasks.datasets.hub import get_field
from tasks.datasets.hub_specs import HUB_SPECS


def _img(v: int) -> Image.Image:
    return Image.new("RGB", (10, 8), (v, 255 - v, 30))


def _vqa_answers(words: list[str]) -> list[dict[str, Any]]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]


# Columns as listed on each dataset's hub card; two rows each.
SCHEMAS: dict[str, dict[str, list[Any]]] = {
    "coco_karpathy": {"image": [_img(1), _img(2)], "caption": [["A cat.", "A kitten."], ["A bus.", "A red bus."]],
                      "sentids": [["1", "2"], ["3", "4"]], "img_id": ["0", "1"], "filename": ["a.jpg", "b.jpg"]},
    "flickr30k": {"image": [_img(3), _img(4)], "caption": [["Two dogs ."], ["A man ."]], "sentids": [["0"], ["1"]],
                  "img_id": ["0", "1"], "filename": ["1.jpg", "2.jpg"]},
    "nocaps": {"image": [_img(5), _img(6)], "image_id": [0, 1], "image_open_images_id": ["0013ea", "00d1"],
               "image_file_name": ["0013ea.jpg", "00d1.jpg"], "annotations_ids": [[0, 1], [2, 3]],
               "annotations_captions": [["A baby is sleeping.", "An infant asleep."], ["A car.", "A blue car."]]},
    "vqav2": {"question_type": ["what color", "how many"], "multiple_choice_answer": ["red", "2"],
              "answers": [_vqa_answers(["red"] * 9 + ["maroon"]), _vqa_answers(["2", "two"] * 5)],
              "image_id": [42, 43], "answer_type": ["other", "number"], "question_id": [420, 430],
              "question": ["What color is it?", "How many?"], "image": [_img(7), _img(8)]},
    "okvqa": {"question_id": ["1", "2"], "image": [_img(9), _img(10)], "question": ["What sport?", "Which city?"],
              "answers": [["tennis"] * 10, ["paris"] * 8 + ["london"] * 2], "question_type": ["sports", "geo"],
              "answer_type": ["other", "other"]},
    "aokvqa": {"image": [_img(11), _img(12)], "question_id": ["q1", "q2"], "question": ["What is it for?", "Why?"],
               "choices": [["eat", "sleep", "run", "fly"], ["rain", "sun", "snow", "wind"]],
               "correct_choice_idx": [0, 2],
               # the card's type: a string holding a Python list (parsed with ast.literal_eval)
               "direct_answers": [str(["eat"] * 9 + ["dine"]), str(["snow"] * 10)],
               "difficult_direct_answer": [False, True], "rationales": [["r"], ["s"]]},
    "textvqa": {"image_id": ["a1", "a2"], "question_id": [1, 2], "question": ["What brand?", "What number?"],
                "image": [_img(13), _img(14)], "answers": [["nokia"] * 10, ["7"] * 10], "ocr_tokens": [["nokia"], ["7"]],
                "set_name": ["val", "val"]},
    "vizwiz": {"question_id": ["VizWiz_val_0.jpg", "VizWiz_val_1.jpg"], "image": [_img(15), _img(16)],
               "question": ["What is this?", "What color?"], "answers": [["unanswerable"] * 10, ["blue"] * 10],
               "category": ["unanswerable", "other"]},
    "scienceqa": {"image": [_img(17), None, _img(18)], "question": ["Which is a mammal?", "Text only?", "Which is hot?"],
                  "choices": [["whale", "shark"], ["a", "b"], ["ice", "fire", "snow"]], "answer": [0, 1, 1],
                  "hint": ["", "context", "Look."], "task": ["c"] * 3, "grade": ["grade3"] * 3, "subject": ["natural science"] * 3,
                  "topic": ["biology"] * 3, "category": ["x"] * 3, "skill": ["s"] * 3, "lecture": [""] * 3, "solution": [""] * 3},
}


def _features(columns: dict[str, list[Any]]) -> datasets.Features | None:
    """Give the image column the Image feature (as on the hub) even when a value is None."""
    feats = datasets.Dataset.from_dict({k: v for k, v in columns.items() if k != "image"}).features
    feats["image"] = datasets.Image()
    return feats


def _write_parquet(name: str, tmp_path: Path) -> Path:
    ds = datasets.Dataset.from_dict(SCHEMAS[name], features=_features(SCHEMAS[name]))
    path = tmp_path / f"{name}.parquet"
    ds.to_parquet(str(path))
    return path


def test_every_spec_has_a_fixture_schema() -> None:
    assert {s.name for s in HUB_SPECS} == set(SCHEMAS)
    assert {f"hub_{s.name}" for s in HUB_SPECS} <= set(LOADERS)


@pytest.mark.parametrize("spec", HUB_SPECS, ids=lambda s: s.name)
def test_each_mapping_reads_its_schema_from_local_parquet(spec, tmp_path: Path) -> None:
    path = _write_parquet(spec.name, tmp_path)
    split = next(iter(spec.splits))
    ds = load_dataset(f"hub_{spec.name}", split, {"data_files": str(path), "cache_dir": str(tmp_path / "cache")})
    rows = SCHEMAS[spec.name]
    kept = [i for i, im in enumerate(rows["image"]) if im is not None]
    assert len(ds) == len(kept) and ds.name == spec.name and ds.license
    for sample, i in zip(ds.samples, kept):
        img = sample.load_image()
        assert img.mode == "RGB" and img.getpixel((0, 0)) == rows["image"][i].getpixel((0, 0))
        if spec.kinds[0] == "caption":
            assert list(sample.references) == rows[spec.captions][i]
        elif spec.kinds[0] == "vqa":
            assert sample.question == rows[spec.question][i]
            want = get_field({k: v[i] for k, v in rows.items()}, spec.answers)
            if spec.answers_literal and isinstance(want, str):  # the card's string-typed list
                want = ast.literal_eval(want)
            assert list(sample.answers) == want
        else:
            assert list(sample.choices) == rows[spec.choices][i]
            assert sample.answer_index == rows[spec.answer_index][i]
        if spec.id:
            assert sample.sample_id == f"{spec.name}/{rows[spec.id][i]}"
        for m in spec.meta:
            assert sample.meta[m] == rows[m][i]


def test_vqav2_nested_answers_and_scienceqa_image_subset(tmp_path: Path) -> None:
    vqa = load_dataset("hub_vqav2", "val", {"data_files": str(_write_parquet("vqav2", tmp_path)), "cache_dir": str(tmp_path / "cache")})
    assert vqa.samples[0].answers == tuple(["red"] * 9 + ["maroon"])
    assert vqa.samples[1].meta["answer_type"] == "number"
    sqa = load_dataset("hub_scienceqa", "test", {"data_files": str(_write_parquet("scienceqa", tmp_path)), "cache_dir": str(tmp_path / "cache")})
    assert [s.question for s in sqa.samples] == ["Which is a mammal?", "Which is hot?"]
    assert sqa.samples[1].gold_text == "fire" and sqa.samples[1].meta["hint"] == "Look."
    assert sqa.samples[1].meta["row"] == 2  # images stay aligned after dropping the text-only row
    assert sqa.samples[1].load_image().getpixel((0, 0)) == _img(18).getpixel((0, 0))


def test_aokvqa_offers_direct_answer_and_multiple_choice(tmp_path: Path) -> None:
    path = str(_write_parquet("aokvqa", tmp_path))
    direct = load_dataset("hub_aokvqa", "val", {"data_files": path, "cache_dir": str(tmp_path / "cache")})
    assert direct.samples[1].answers == ("snow",) * 10 and direct.samples[1].choices == ()
    assert direct.samples[0].answers == ("eat",) * 9 + ("dine",)  # parsed from the card's string type
    mc = load_dataset("hub_aokvqa", "val", {"data_files": path, "task": "multiple_choice", "cache_dir": str(tmp_path / "cache")})
    assert mc.samples[1].choices == ("rain", "sun", "snow", "wind") and mc.samples[1].gold_text == "snow"
    with pytest.raises(ValueError, match="supports task"):
        load_dataset("hub_vqav2", "val", {"data_files": path, "task": "caption", "cache_dir": str(tmp_path / "cache")})


def test_save_to_disk_folder_with_split_dict(tmp_path: Path) -> None:
    cols = SCHEMAS["nocaps"]
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict(cols, features=_features(cols))})
    dd.save_to_disk(str(tmp_path / "nocaps"))
    ds = load_dataset("hub_nocaps", "val", {"path": str(tmp_path / "nocaps")})
    assert ds.samples[0].references == ("A baby is sleeping.", "An infant asleep.")
    assert ds.samples[1].sample_id == "nocaps/1"
    with pytest.raises(ValueError, match="splits \\['validation'\\], not 'test'"):
        load_dataset("hub_nocaps", "test", {"path": str(tmp_path / "nocaps")})


def test_schema_mismatch_names_the_available_columns(tmp_path: Path) -> None:
    cols = dict(SCHEMAS["vizwiz"])
    cols["answer_list"] = cols.pop("answers")
    path = tmp_path / "v.parquet"
    datasets.Dataset.from_dict(cols, features=_features(cols)).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"column\(s\) \['answers'\] not in the data; available: .*answer_list"):
        load_dataset("hub_vizwiz", "val", {"data_files": str(path), "cache_dir": str(tmp_path / "cache")})


def test_a_row_without_image_fails_only_when_loaded(tmp_path: Path) -> None:
    cols = dict(SCHEMAS["okvqa"])
    cols["image"] = [None, _img(3)]
    path = tmp_path / "o.parquet"
    datasets.Dataset.from_dict(cols, features=_features(cols)).to_parquet(str(path))
    ds = load_dataset("hub_okvqa", "val", {"data_files": str(path), "cache_dir": str(tmp_path / "cache")})
    assert ds.samples[1].load_image().size == (10, 8)
    with pytest.raises(ImageLoadError, match="okvqa/1 .*no image"):
        ds.samples[0].load_image()


def test_aokvqa_direct_answers_string_is_parsed_as_a_literal_never_run(tmp_path: Path) -> None:
    cols = {**SCHEMAS["aokvqa"], "direct_answers": ["__import__('os').getcwd()", "['ok']"]}
    path = tmp_path / "evil.parquet"
    datasets.Dataset.from_dict(cols, features=_features(cols)).to_parquet(str(path))
    with pytest.raises(ValueError, match="aokvqa/q1 answers: cannot read"):
        load_dataset("hub_aokvqa", "val", {"data_files": str(path), "cache_dir": str(tmp_path / "cache")})


def test_hub_id_can_be_overridden_and_is_reported(monkeypatch, tmp_path: Path) -> None:
    seen = {}

    def fake_load(hub_id, **kw):
        seen.update(hub_id=hub_id, **kw)
        return datasets.Dataset.from_dict(SCHEMAS["okvqa"], features=_features(SCHEMAS["okvqa"]))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a branch name cannot be resolved to a commit offline
    ds = load_dataset("hub_okvqa", "val", {"hub_id": "lmms-lab-encoder/OK-VQA", "revision": "abc123"})
    assert seen["hub_id"] == "lmms-lab-encoder/OK-VQA" and seen["revision"] == "abc123"
    assert ds.source == "hub:lmms-lab-encoder/OK-VQA@unpinned:abc123"
    sha = "0123456789abcdef0123456789abcdef01234567"  # a commit is its own pin
    assert load_dataset("hub_okvqa", "val", {"hub_id": "x/OK-VQA", "revision": sha}).source == f"hub:x/OK-VQA@{sha}"
