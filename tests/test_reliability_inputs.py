"""Bad input: every broken image or text fails only its own sample (counted, named, run goes on);
odd-but-valid images load as the RGB a viewer shows; config and dataset problems stop the run with
a clear message before any model loads. Fixtures are COCO-caption and official-VQA folders built
here, run through ``mmbench run`` on the ``coco_caption_local`` / ``vqav2_local`` task specs."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from harness.config import ConfigError, load_config, parse_config
from harness.plan import plan_run
from tasks.datasets._common import MAX_IMAGE_PIXELS, ImageLoadError, open_rgb

GOOD = Image.fromarray(np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (32, 1))).convert("RGB")


# ------------------------------------------------------------------------------ image fixtures
def _bomb_png(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header declares ``width × height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def write_images(folder: Path) -> dict[str, str]:
    """Write one file per case; returns case -> file name. Cases starting 'bad_' must fail."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}

    def put(case: str, name: str, data: bytes | None = None, img: Image.Image | None = None, **kw: object) -> None:
        path = folder / name
        if img is not None:
            img.save(path, **kw)
        else:
            path.write_bytes(data or b"")
        files[case] = name

    put("good", "good.png", img=GOOD)
    jpeg = _jpeg_bytes(GOOD)
    put("bad_truncated", "truncated.jpg", jpeg[: len(jpeg) // 2])
    put("bad_zero_bytes", "zero.jpg", b"")
    put("bad_not_an_image", "notes.jpg", b"these are my notes, not a picture\n" * 20)
    put("bad_bomb", "bomb.png", _bomb_png(50_000, 50_000))  # refused by PIL's own hard limit
    put("bad_huge", "huge.png", _bomb_png(8_000, 8_000))  # under PIL's limits, over mmbench's
    files["bad_missing"] = "missing.jpg"  # listed in the annotations, absent on disk
    put("cmyk", "cmyk.jpg", img=GOOD.convert("CMYK"))
    put("gray16", "gray16.png", img=Image.fromarray((np.asarray(GOOD.convert("L")).astype(np.uint16) * 257)))
    put("palette", "palette.png", img=GOOD.quantize(16))
    rgba = GOOD.convert("RGBA")
    rgba.putalpha(Image.new("L", GOOD.size, 255))
    put("rgba", "rgba.png", img=rgba)
    put("gray", "gray.png", img=GOOD.convert("L"))
    put("one_pixel", "one.png", img=Image.new("RGB", (1, 1), (200, 10, 10)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    put("exif_rotated", "exif.jpg", _jpeg_bytes(GOOD.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes()))
    return files


# ------------------------------------------------------------------- image opening, in process
def test_image_modes_load_as_the_rgb_a_viewer_shows(tmp_path):
    files = write_images(tmp_path)
    ref = np.asarray(GOOD, dtype=np.int16)
    for case in ("cmyk", "gray16", "palette", "rgba", "gray", "exif_rotated"):
        img = open_rgb(tmp_path / files[case])
        assert img.mode == "RGB" and img.size == GOOD.size, case
        err = np.abs(np.asarray(img, dtype=np.int16) - ref).mean()
        assert err < 12, f"{case}: mean abs error {err:.1f} vs the original"
    assert open_rgb(tmp_path / files["one_pixel"]).getpixel((0, 0)) == (200, 10, 10)
    # 16-bit is scaled, not clipped: without scaling every pixel > 255 would be white
    assert np.asarray(open_rgb(tmp_path / files["gray16"])).mean() < 200
    # transparent pixels become white (PIL's plain convert makes them black)
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert open_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.save(tmp_path / "clear_p.png", transparency=0)
    assert open_rgb(tmp_path / "clear_p.png").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "case, words",
    [
        ("bad_truncated", "Truncated File Read"),
        ("bad_zero_bytes", "empty (0 bytes)"),
        ("bad_not_an_image", "cannot identify"),
        ("bad_bomb", "decompression bomb"),
        ("bad_huge", "8000×8000 = 64000000 pixels, over the limit of 40000000 (possible decompression bomb)"),
        ("bad_missing", "not found"),
    ],
)
def test_broken_images_raise_image_load_error_naming_file_and_reason(tmp_path, case, words):
    files = write_images(tmp_path)
    with pytest.raises(ImageLoadError) as err:
        open_rgb(tmp_path / files[case])
    assert files[case] in str(err.value) and words in str(err.value)
    assert 8_000 * 8_000 > MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- dataset fixtures
def make_coco(root: Path, files: dict[str, str], *, extra_images: list[dict] | None = None) -> None:
    images = [{"id": i, "file_name": name, "unknown_field": "ignored"} for i, name in enumerate(files.values())]
    images += extra_images or []
    anns = [{"image_id": im["id"], "caption": f"a picture number {im['id']}", "id": k} for k, im in enumerate(images)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))


COCO_OPTS = {"annotations": "annotations/captions.json", "images_dir": "images"}

QUESTIONS = {
    "ok": "What colour is the picture?",
    "empty": "",
    "huge": "why " * 10_000,
    "control": "What\x00 is\x1b[2J this\x07?",
    "unicode": "Qu'est-ce que c'est ? 这是什么？ 🙂",
}


def make_vqa(root: Path, questions: dict[str, str], *, image: str = "COCO_val2014_000000000001.jpg",
             drop_annotation: bool = False, duplicate: bool = False) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    GOOD.save(root / "images" / image)
    qs = [{"image_id": 1, "question": q, "question_id": i + 1, "extra": [1, 2]} for i, q in enumerate(questions.values())]
    if duplicate:
        qs.append(dict(qs[0]))
    anns = [{"question_id": q["question_id"], "image_id": 1, "answers": [{"answer": "grey", "answer_id": 1}] * 10}
            for q in qs]
    if drop_annotation:
        anns = anns[1:]
    (root / "questions.json").write_text(json.dumps({"questions": qs, "data_subtype": "val2014"}, ensure_ascii=False), encoding="utf-8")
    (root / "annotations.json").write_text(json.dumps({"annotations": anns}))


def vqa_opts(root: Path) -> dict:
    return {"root": str(root), "questions": "questions.json", "annotations": "annotations.json", "images_dir": "images"}


def run_config(tmp: Path, llm_dir: Path, tasks: list[dict], **over: object) -> dict:
    cfg = {
        "name": "bad-input",
        "seed": 0,
        "batch_size": 4,
        "bootstrap": 20,
        "paradigms": [{"name": "text_conversion/pica", "options": {"converters": [{"kind": "objects"}]}}],
        "tasks": tasks,
        "models": {"llm": {"source": "local", "name": str(llm_dir), "device": "cpu", "dtype": "float32"}},
        "generation": {"max_new_tokens": 3},
    }
    cfg.update(over)
    return cfg


def _cli(cfg: dict, tmp: Path, results: Path) -> subprocess.CompletedProcess:
    path = tmp / f"cfg-{results.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    env = {**__import__("os").environ, "MMBENCH_CACHE": str(tmp / "mmcache")}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--config", str(path), "--results-dir", str(results), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600,
    )


def _errors(results: Path) -> dict[str, str | None]:
    with sqlite3.connect(results / "cache.sqlite") as db:
        rows = db.execute("SELECT sample_id, payload FROM answers").fetchall()
    return {sid: json.loads(p)["error"] for sid, p in rows}


# ------------------------------------------------------------------ end to end through the CLI
@pytest.mark.slow
def test_bad_samples_fail_alone_and_are_counted_and_named(tmp_path, tiny_llm_dir):
    files = write_images(tmp_path / "coco" / "images")
    make_coco(tmp_path / "coco", files)
    make_vqa(tmp_path / "vqa", QUESTIONS)
    cfg = run_config(tmp_path, tiny_llm_dir, [
        {"name": "coco_caption_local", "dataset_options": {"root": str(tmp_path / "coco"), **COCO_OPTS}},
        {"name": "vqav2_local", "dataset_options": vqa_opts(tmp_path / "vqa")},
    ])
    done = _cli(cfg, tmp_path, tmp_path / "r")
    assert done.returncode == 0, done.stderr[-3000:]
    errors = _errors(tmp_path / "r")
    assert len(errors) == len(files) + len(QUESTIONS)  # every sample has exactly one cached answer
    ids = list(files)
    for i, case in enumerate(ids):
        err = errors[f"coco_captions/{i}"]
        assert (err is not None) == case.startswith("bad_"), (case, err)
        if err:
            assert files[case] in err and f"coco_captions/{i}" in done.stderr
    qids = list(QUESTIONS)
    assert errors[f"vqav2/{qids.index('empty') + 1}"] == "empty question"
    assert "question too long" in errors[f"vqav2/{qids.index('huge') + 1}"]
    for ok in ("ok", "control", "unicode"):
        assert errors[f"vqav2/{qids.index(ok) + 1}"] is None, ok
    n_bad = sum(c.startswith("bad_") for c in files)
    assert f"{n_bad} of {len(files)} samples failed" in done.stderr
    csv = tmp_path / "r" / "runs" / "latest" / "results.csv"
    frame = pd.read_csv(csv).groupby("task")["n_failed"].max()
    assert frame["coco_caption_local"] == n_bad and frame["vqav2_local"] == 2
    assert f"({n_bad} failed)" in done.stdout


@pytest.mark.slow
def test_path_escaping_the_dataset_root_stops_before_compute(tmp_path, tiny_llm_dir):
    files = write_images(tmp_path / "coco" / "images")
    make_coco(tmp_path / "coco", {"good": files["good"]},
              extra_images=[{"id": 99, "file_name": "../../etc/passwd"}])
    cfg = run_config(tmp_path, tiny_llm_dir, [
        {"name": "coco_caption_local", "dataset_options": {"root": str(tmp_path / "coco"), **COCO_OPTS}},
    ])
    done = _cli(cfg, tmp_path, tmp_path / "r")
    assert done.returncode != 0
    assert "escapes the dataset root" in done.stderr and "../../etc/passwd" in done.stderr
    assert not (tmp_path / "r" / "cache.sqlite").exists()  # stopped before the cache opened


# ------------------------------------------------------- dataset/config problems, before compute
def _plan(tmp: Path, llm_dir: Path, tasks: list[dict], **over: object):
    return plan_run(parse_config(run_config(tmp, llm_dir, tasks, **over)))


def test_dataset_level_problems_are_config_errors(tmp_path):
    llm = tmp_path / "no-model-needed"
    make_vqa(tmp_path / "dup", QUESTIONS, duplicate=True)
    with pytest.raises(ConfigError, match="duplicate sample ids"):
        _plan(tmp_path, llm, [{"name": "vqav2_local", "dataset_options": vqa_opts(tmp_path / "dup")}])
    make_vqa(tmp_path / "noref", QUESTIONS, drop_annotation=True)
    with pytest.raises(ConfigError, match="have no annotation"):
        _plan(tmp_path, llm, [{"name": "vqav2_local", "dataset_options": vqa_opts(tmp_path / "noref")}])
    make_vqa(tmp_path / "empty", {})
    with pytest.raises(ConfigError, match="zero samples"):
        _plan(tmp_path, llm, [{"name": "vqav2_local", "dataset_options": vqa_opts(tmp_path / "empty")}])
    make_vqa(tmp_path / "latin1", QUESTIONS)
    (tmp_path / "latin1" / "questions.json").write_bytes(
        json.dumps({"questions": [{"image_id": 1, "question": "caf\u00e9?", "question_id": 1}]}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ConfigError, match="utf-8"):
        _plan(tmp_path, llm, [{"name": "vqav2_local", "dataset_options": vqa_opts(tmp_path / "latin1")}])
    with pytest.raises(ConfigError, match="unknown option.*colour"):
        _plan(tmp_path, llm, [{"name": "vqav2_local", "dataset_options": {**vqa_opts(tmp_path / "dup"), "colour": 1}}])
    with pytest.raises(ConfigError, match="in_context.shots asks for 50 demonstrations but task 'world_vqa' has only"):
        _plan(tmp_path, llm, [{"name": "world_vqa", "dataset_options": {"n_images": 10}}], in_context={"shots": [0, 50]})


@pytest.mark.parametrize(
    "over, words",
    [
        ({"bootstrap": float("nan")}, "bootstrap' is nan"),
        ({"generation": {"temperature": float("inf")}}, "temperature' is inf"),
        ({"batch_size": -4}, "batch_size"),
        ({"limit": 0}, "limit"),
        ({"in_context": {"shots": [-1]}}, "shot counts must be >= 0"),
        ({"generation": {"max_new_tokens": -1}}, "max_new_tokens"),
        ({"colour": "red"}, "unknown config key 'colour'"),
    ],
)
def test_nan_negative_and_unknown_config_values_are_rejected(tmp_path, over, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        parse_config(run_config(tmp_path, tmp_path, [{"name": "world_vqa"}], **over))


def test_nan_in_yaml_is_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(run_config(tmp_path, tmp_path, [{"name": "world_vqa"}])) + "seed: 0\nbootstrap: .nan\n")
    with pytest.raises(ConfigError, match="finite"):
        load_config(p)


def test_trust_remote_code_in_a_config_warns(tmp_path):
    cfg = run_config(tmp_path, tmp_path, [{"name": "world_vqa"}])
    cfg["models"]["llm"]["trust_remote_code"] = True
    with pytest.warns(UserWarning, match="models.llm.trust_remote_code.*code shipped with the model"):
        parse_config(cfg)
    cfg["models"]["llm"]["trust_remote_code"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_config(cfg)

