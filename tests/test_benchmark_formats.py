"""The standard benchmarks from the files researchers keep, run few-shot as their papers ran them.

Every loader reads a fixture written in its exact released format (tests/benchmark_fixtures.py)
through the real task spec, and one ``mmbench run --shots 2`` over all of them checks that each
sample got 2 demonstrations from the task's support split, none showing the query's image, in the
documented order (random: the seeded draw of tasks/shots.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, parse_config
from harness.plan import plan_run
from tasks.datasets import load_dataset
from tasks.shots import select_shots
from tasks.spec import get_task
from tests import benchmark_fixtures as fx

PACKAGED = {"llm": {"source": "packaged", "name": "smollm2-135m-instruct"}, "scorer": {"kind": "tag-minilm"}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict]:
    """Task name -> dataset_options pointing at its released-format fixture."""
    root = tmp_path_factory.mktemp("benchmarks")
    ann, images = fx.write_karpathy_coco(root / "coco")
    fx.write_vqa_official(root / "okvqa", okvqa=True)
    fx.write_vqa_official(root / "vqav2", okvqa=False)
    fx.write_aokvqa(root / "aokvqa")
    fx.write_scienceqa(root / "scienceqa")
    fx.write_textvqa(root / "textvqa")
    fx.write_vizwiz(root / "vizwiz")
    fx.write_nocaps_val(root / "nocaps")
    fx.write_coco_captions_official(root / "coco_official")
    return {
        "coco_caption_local": {"root": str(root / "coco_official")},
        "karpathy_caption_local": {"annotations": str(ann), "images_root": str(images)},
        "okvqa_local": {"root": str(root / "okvqa")},
        "vqav2_local": {"root": str(root / "vqav2")},
        "aokvqa_local": {"root": str(root / "aokvqa")},
        "aokvqa_mc_local": {"root": str(root / "aokvqa")},
        "scienceqa_local": {"root": str(root / "scienceqa")},
        "textvqa_local": {"root": str(root / "textvqa")},
        "vizwiz_local": {"root": str(root / "vizwiz")},
        # NoCaps draws its demonstrations from another dataset: COCO Karpathy train
        "nocaps_local": {"root": str(root / "nocaps"), "support": {"annotations": str(ann), "images_root": str(images)}},
    }


def _ref(task: str, options: dict) -> dict:
    """The config entry of a task: dataset options, and the support dataset's own options if any."""
    opts = {k: v for k, v in options.items() if k != "support"}
    return {"name": task, "dataset_options": opts, **({"support_options": options["support"]} if "support" in options else {})}


def _split(task: str, options: dict, which: str):
    spec = get_task(task)
    opts = {k: v for k, v in options.items() if k != "support"}
    if which == "eval":
        return load_dataset(spec.dataset, spec.split, {**spec.dataset_options, **opts})
    if spec.support_dataset is not None:
        return load_dataset(spec.support_dataset, spec.support_split, {**spec.support_dataset_options, **options["support"]})
    return load_dataset(spec.dataset, spec.support_split, {**spec.dataset_options, **opts})


# ------------------------------------------------------------------------- loaders, field by field
def test_karpathy_reads_splits_restval_and_image_paths(data) -> None:
    o = data["karpathy_caption_local"]
    test, train = _split("karpathy_caption_local", o, "eval"), _split("karpathy_caption_local", o, "support")
    assert len(test) == 3 and len(train) == 5  # train + restval
    assert {s.meta["karpathy_split"] for s in train.samples} == {"train", "restval"}
    s = test.samples[0]
    assert s.sample_id == "coco_karpathy/1006" and s.references[0] == "A tree in view number 0."
    assert s.image_ref.endswith("val2014/COCO_val2014_000000001006.jpg") and s.load_image().size == (24, 16)
    no_restval = load_dataset("karpathy", "train", {**o, "restval_in_train": False})
    assert len(no_restval) == 3


def test_okvqa_and_vqav2_official_names(data) -> None:
    ok = _split("okvqa_local", data["okvqa_local"], "eval")
    assert ok.name == "okvqa" and len(ok) == 4 and ok.samples[0].answers == ("red",) * 10
    assert ok.samples[0].image_ref.endswith("val2014/COCO_val2014_000000000200.jpg")
    v2 = _split("vqav2_local", data["vqav2_local"], "support")
    assert v2.name == "vqav2" and len(v2) == 8 and "v2_OpenEnded_mscoco_train2014_questions.json" in v2.source


def test_aokvqa_direct_answer_and_multiple_choice(data) -> None:
    da = _split("aokvqa_local", data["aokvqa_local"], "eval")
    s = da.samples[1]
    assert s.sample_id == "aokvqa/valq0001" and s.answers == ("green",) * 9 + ("other",) and not s.choices
    assert s.image_ref.endswith("val2017/000000000401.jpg") and s.meta["rationales"][0] == "Because it is a green."
    mc = _split("aokvqa_mc_local", data["aokvqa_mc_local"], "eval")
    assert mc.samples[1].choices == ("blue", "green", "cat", "dog") and mc.samples[1].gold_text == "green"


def test_scienceqa_image_subset_by_default_all_questions_by_option(data) -> None:
    o = data["scienceqa_local"]
    img = _split("scienceqa_local", o, "eval")
    assert len(img) == 4 and all(s.meta["has_image"] for s in img.samples)
    every = load_dataset("scienceqa", "test", {**o, "questions": "all"})
    assert len(every) == 5
    text_only = next(s for s in every.samples if not s.meta["has_image"])
    assert not text_only.meta["has_text"] and text_only.meta["no_context"]
    first = img.samples[0]
    assert first.sample_id == "scienceqa/8" and first.image_ref.endswith("images/test/8/image.png")
    assert first.meta["subject"] == "natural science" and first.meta["grade"] == "grade1"
    assert first.meta["no_context"] is False and first.meta["lecture"].startswith("A lecture line.")
    assert first.choices == ("red", "blue") and first.answer_index == 0


def test_textvqa_and_vizwiz_release_layouts(data) -> None:
    tv = _split("textvqa_local", data["textvqa_local"], "eval")
    assert tv.samples[1].sample_id == "textvqa/2001" and tv.samples[1].answers == ("blue",) * 10
    assert "/train_images/va" in tv.samples[1].image_ref
    vw = _split("vizwiz_local", data["vizwiz_local"], "support")
    assert vw.samples[3].sample_id == "vizwiz/VizWiz_train_00000003" and vw.samples[3].answers == ("cat",) * 10
    assert vw.samples[3].image_ref.endswith("train/VizWiz_train_00000003.jpg")


# ------------------------------------------------------------------------------ few-shot, end to end
def _config(tmp: Path, tasks: list[dict], paradigms: list[dict], **over: object) -> Path:
    cfg = {"name": "formats", "seed": 0, "batch_size": 4, "bootstrap": 0, "clipscore": False,
           "paradigms": paradigms, "tasks": tasks, "models": PACKAGED, "generation": {"max_new_tokens": 3}}
    cfg.update(over)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(tmp: Path, cfg: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--config", str(cfg), "--results-dir", str(tmp / "r"), "--no-progress", *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_every_format_runs_two_shot_with_support_demonstrations_never_the_query_image(tmp_path, data) -> None:
    tasks = [_ref(name, opts) for name, opts in data.items()]
    paradigm = [{"name": "text_conversion/pica", "options": {"converters": []}}]
    done = _cli(tmp_path, _config(tmp_path, tasks, paradigm), "--shots", "2", "--limit", "2")
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for p in (tmp_path / "r").glob("mlartifacts/**/predictions.jsonl")
            for line in p.read_text().splitlines() if line.strip()]
    for name, opts in data.items():
        evaluated = {s.sample_id: s for s in _split(name, opts, "eval").samples}
        support = _split(name, opts, "support")
        by_id = {s.sample_id: s for s in support.samples}
        def prompt(s):
            return get_task(name).render_prompt(s.question, s.choices, s.meta.get("hint", ""))

        mine = [r for r in rows if r["sample_id"] in evaluated and r["prompt"] == prompt(evaluated[r["sample_id"]])]
        assert len(mine) == 2, (name, len(mine))
        for r in mine:
            query = evaluated[r["sample_id"]]
            assert len(r["shots"]) == 2 and r["shot_strategy"] == "random", (name, r)
            assert all(i in by_id for i in r["shots"]), (name, r["shots"])  # from the support split
            assert all(by_id[i].image_ref != query.image_ref for i in r["shots"])  # never the query's image
            expected = select_shots(query, support.samples, 2, strategy="random", seed=0, trial=0)
            assert r["shots"] == [s.sample_id for s in expected]  # the documented order
            assert r["error"] is None, (name, r["error"])


def test_shots_on_a_task_without_support_stop_at_plan_time_naming_it(tmp_path) -> None:
    cfg = {"paradigms": [{"name": "text_conversion/pica"}], "tasks": [{"name": "vqav2_val"}],
           "in_context": {"shots": [0, 2]}, "models": PACKAGED}
    with pytest.raises(ConfigError, match="task 'vqav2_val' has no support split.*vqav2_local"):
        plan_run(parse_config(cfg))
    cfg["in_context"] = {"shots": [0, 2], "strategy": "rices_qi"}
    cfg["tasks"] = [{"name": "photos_caption"}]
    with pytest.raises(ConfigError, match="'rices_qi' compares questions, but task 'photos_caption' is captioning"):
        plan_run(parse_config(cfg))


@pytest.mark.slow
def test_cli_exits_non_zero_before_any_model_loads(tmp_path) -> None:
    cfg = _config(tmp_path, [{"name": "okvqa_val"}], [{"name": "text_conversion/pica"}])
    done = _cli(tmp_path, cfg, "--shots", "2")
    assert done.returncode != 0
    assert "task 'okvqa_val' has no support split" in done.stderr and "okvqa_local" in done.stderr
    assert not (tmp_path / "r" / "cache.sqlite").exists()  # stopped before the cache (and any model)


# ------------------------------------------------------------------------- retrieval, real scorer
def _runner(tmp: Path, task: dict, strategy: str, cache_name: str):
    from harness.backbones import Backbones
    from harness.cache import ResultCache
    from harness.runner import Runner

    cfg = parse_config({"paradigms": [{"name": "text_conversion/pica", "options": {"converters": []}}],
                        "tasks": [task], "in_context": {"shots": [2], "strategy": strategy}, "models": PACKAGED})
    plan = plan_run(cfg)
    backbones = Backbones(cfg.models, cache_dir=tmp / "mmcache")
    return Runner(plan, cache=ResultCache(tmp / cache_name), backbones=backbones, progress=False), plan.units()[0]


@pytest.mark.slow
@pytest.mark.parametrize("task, strategy", [("karpathy_caption_local", "rices"), ("okvqa_local", "rices_qi")])
def test_retrieval_with_the_run_scorer_most_similar_last_and_support_embeddings_kept_on_disk(
    tmp_path, data, task, strategy
) -> None:
    import numpy as np

    from harness.interface import image_id_of

    runner, unit = _runner(tmp_path, _ref(task, data[task]), strategy, "a.sqlite")
    chosen = runner.shots.select(unit.task, unit.shots, unit.trial)
    scorer = runner.backbones.scorer
    support = unit.task.support.samples

    def image_emb(samples):
        imgs = [s.load_image() for s in samples]
        return scorer.embed_images(imgs, [image_id_of(i) for i in imgs]).float().numpy()

    sup = image_emb(support)
    for q in unit.task.dataset.samples:
        sims = sup @ image_emb([q])[0]
        if strategy == "rices_qi":
            sims = (sims + scorer.embed_texts([s.question for s in support]).float().numpy()
                    @ scorer.embed_texts([q.question]).float().numpy()[0]) / 2
        ranked = sorted((j for j, s in enumerate(support) if s.image_ref != q.image_ref),
                        key=lambda j: (-sims[j], support[j].sample_id))
        want = [support[j].sample_id for j in reversed(ranked[:2])]  # most similar last
        assert [s.sample_id for s in chosen[q.sample_id]] == want, q.sample_id
        assert sims[ranked[0]] >= sims[ranked[1]]
    assert list((tmp_path / "mmcache" / "support_embeddings").glob("image-*.npy"))

    # a fresh run (empty result cache) reads the support embeddings from disk: only the queries are embedded
    again, unit2 = _runner(tmp_path, _ref(task, data[task]), strategy, "b.sqlite")
    seen: list[int] = []
    real = type(again.backbones.scorer)._embed_images

    def counting(self, images, ids):
        seen.append(len(images))
        return real(self, images, ids)

    type(again.backbones.scorer)._embed_images = counting
    try:
        assert again.shots.select(unit2.task, unit2.shots, unit2.trial) == chosen
    finally:
        type(again.backbones.scorer)._embed_images = real
    n_query_images = len({q.image_ref for q in unit2.task.dataset.samples})
    assert sum(seen) == n_query_images and np.isfinite(sup).all()


def test_nocaps_reads_its_release_and_takes_demonstrations_from_coco_karpathy_only_when_asked(data) -> None:
    nocaps = _split("nocaps_local", data["nocaps_local"], "eval")
    assert nocaps.name == "nocaps" and len(nocaps) == 3 and len(nocaps.samples[2].references) == 10
    assert nocaps.samples[0].image_ref.endswith("validation/0000000000000000.jpg")
    base = {"paradigms": [{"name": "text_conversion/pica"}], "models": PACKAGED}
    opts = {k: v for k, v in data["nocaps_local"].items() if k != "support"}
    zero = plan_run(parse_config({**base, "tasks": [{"name": "nocaps_local", "dataset_options": opts}]}))
    assert zero.tasks[0].support is None  # 0-shot: the other dataset is not needed, not read
    two = plan_run(parse_config({**base, "tasks": [_ref("nocaps_local", data["nocaps_local"])], "in_context": {"shots": [2]}}))
    assert two.tasks[0].support.name == "coco_karpathy" and len(two.tasks[0].support) == 5
    with pytest.raises(ConfigError, match="cannot load its demonstrations.*tasks\\[\\]\\.support_options"):
        plan_run(parse_config({**base, "tasks": [{"name": "nocaps_local", "dataset_options": opts}], "in_context": {"shots": [2]}}))
    with pytest.raises(ConfigError, match="draws demonstrations from its own dataset"):
        plan_run(parse_config({**base, "tasks": [{"name": "okvqa_local", "dataset_options": data["okvqa_local"],
                                                   "support_options": {"root": "/x"}}]}))
