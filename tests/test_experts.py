"""Configured vision experts: real loading of tiny random BLIP/ViLT/DETR/OWL-ViT/ViT folders, the
content-keyed cache, offline config validation, the oracle's withholding, and both agents and both
converters reading the very same experts in one run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image

from harness.config import ConfigError, load_config, parse_config
from harness.experts import OracleLeak, build_experts
from harness.experts.base import ExpertResult, Fact, withhold
from harness.models.llm import GenerationSettings
from tests import tiny_experts as te

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("experts")
    kinds = ("blip_captioner", "blip_vqa", "vilt_vqa", "detr", "owlvit", "vit_classifier")
    return {k: getattr(te, f"save_{k}")(root / k) for k in kinds}


def expert_specs(f: dict[str, Path]) -> list[dict]:
    return [
        {"kind": "captioner", "model": str(f["blip_captioner"]), "max_new_tokens": 5},
        {"kind": "vqa", "model": str(f["blip_vqa"]), "max_new_tokens": 4},
        {"kind": "vqa", "name": "ViLT VQA", "model": str(f["vilt_vqa"])},
        {"kind": "detector", "model": str(f["detr"]), "threshold": 0.0, "max_items": 3},
        {"kind": "open_vocab_detector", "model": str(f["owlvit"]), "threshold": 0.0, "max_items": 2, "queries": ["cat"]},
        {"kind": "classifier", "name": "ViT Classifier", "model": str(f["vit_classifier"]), "min_score": 0.0},
    ]


def registry(f: dict[str, Path]):  # noqa: ANN201
    from harness.config import ModelsConfig

    return build_experts(ModelsConfig(experts=expert_specs(f)).experts)


def photo(colour: str = "red", size: tuple[int, int] = (40, 30)) -> Image.Image:
    im = Image.new("RGB", size, colour)
    im.putpixel((3, 3), (0, 255, 0))
    return im


# ------------------------------------------------------------------------ loading and answering
def test_tiny_experts_load_from_local_folders_and_answer(folders):
    reg = registry(folders)
    im = photo()
    assert reg.names == ("Get Photo Description", "Answer Question About The Image", "ViLT VQA", "Detect Objects",
                         "Detect the Given Object", "ViT Classifier")
    # BLIP captioning: the expert's caption is what the model itself generates greedily
    from transformers import BlipForConditionalGeneration, BlipProcessor

    proc = BlipProcessor.from_pretrained(folders["blip_captioner"])
    model = BlipForConditionalGeneration.from_pretrained(folders["blip_captioner"]).eval()
    ids = model.generate(**proc(images=im, return_tensors="pt"), max_new_tokens=5, do_sample=False)
    direct = proc.batch_decode(ids, skip_special_tokens=True)[0].strip()
    cap = reg.run("Get Photo Description", im)
    assert direct and cap.text == direct and cap.facts == (Fact("Caption", direct),)
    # BLIP VQA (generative) and ViLT (classifier over its answer labels) answer the question
    blip = reg.run("Answer Question About The Image", im, "what color is it?")
    assert blip.text and all(w in te.WORDS for w in blip.text.split())
    from transformers import ViltForQuestionAnswering, ViltProcessor

    vp, vm = ViltProcessor.from_pretrained(folders["vilt_vqa"]), ViltForQuestionAnswering.from_pretrained(folders["vilt_vqa"])
    logits = vm(**vp(images=im, text="what color is it?", return_tensors="pt")).logits[0]
    assert reg.run("ViLT VQA", im, "what color is it?").text == vm.config.id2label[int(logits.argmax())]
    with pytest.raises(ValueError, match="needs the question"):
        reg.run("ViLT VQA", im, "")
    # DETR: labels from its id2label, pixel boxes inside the image, at most max_items
    det = reg.run("Detect Objects", im)
    assert 1 <= len(det.boxes) <= 3 and {b[0] for b in det.boxes} <= {"cat", "dog", "ball"}
    assert all(0 <= x0 <= x1 <= 40 and 0 <= y0 <= y1 <= 30 for _, _, (x0, y0, x1, y1) in det.boxes)
    assert det.text.split(" (")[0] == det.boxes[0][0] and det.facts[0].label == "Objects"
    # OWL-ViT finds what the query names; as a converter, its configured queries
    owl = reg.run("Detect the Given Object", im, "dog")
    assert owl.boxes and {b[0] for b in owl.boxes} == {"dog"}
    assert {b[0] for b in reg.run("Detect the Given Object", im).boxes} == {"cat"}
    # ViT classifier: first synonym of its labels, probabilities summing to 1 over all labels
    cls = reg.run("ViT Classifier", im)
    assert [f.text for f in cls.facts][0] in {"tabby", "golden retriever", "park bench"}
    assert abs(sum(f.score for f in cls.facts) - 1.0) < 1e-3


def test_cache_is_keyed_by_image_content_and_fingerprint(folders):
    reg = registry(folders)
    a, same, other = photo("red"), photo("red"), photo("blue")
    first = reg.run("Get Photo Description", a)
    assert reg.run("Get Photo Description", same) is first  # equal pixels: one call
    reg.run("Get Photo Description", other)
    assert reg.cache_stats().misses == 2 and reg.cache_stats().hits == 1
    # a different setting is a different expert fingerprint, hence a different cache entry
    fp = reg.get("Get Photo Description").fingerprint()
    spec = dict(expert_specs(folders)[0], max_new_tokens=3)
    from harness.config import ModelsConfig

    assert build_experts(ModelsConfig(experts=[spec]).experts).get("Get Photo Description").fingerprint() != fp


def test_missing_local_folder_is_a_clear_error(tmp_path):
    from harness.config import ModelsConfig
    from harness.models.packaged import ModelUnavailable

    reg = build_experts(ModelsConfig(experts=[{"kind": "captioner", "model": str(tmp_path / "nope")}]).experts)
    with pytest.raises(ModelUnavailable, match="local folder"):
        reg.run("Get Photo Description", photo())


# ------------------------------------------------------------------------------ configuration
def test_hub_experts_config_validates_offline():
    cfg = load_config(ROOT / "configs" / "hub_experts.yaml")
    kinds = [e.kind for e in cfg.models.experts]
    assert kinds == ["captioner", "vqa", "detector", "open_vocab_detector", "ocr", "classifier"]
    names = [e.name for e in build_experts(cfg.models.experts)]
    assert names[:4] == ["Get Photo Description", "Answer Question About The Image", "Detect Objects", "Detect the Given Object"]
    base = yaml.safe_load((ROOT / "configs" / "hub_experts.yaml").read_text())
    bad = json.loads(json.dumps(base))
    bad["models"]["experts"].append({"kind": "segmenter", "model": "x"})
    with pytest.raises(ConfigError, match="reference_captions"):  # the valid kinds are listed
        parse_config(bad)
    dup = json.loads(json.dumps(base))
    dup["models"]["experts"].append({"kind": "captioner", "model": "Salesforce/blip-image-captioning-large"})
    with pytest.raises(ConfigError, match="two experts are named 'Get Photo Description'"):
        parse_config(dup)
    oracle = json.loads(json.dumps(base))
    oracle["models"]["experts"] = [{"kind": "reference_captions", "source": "photos_vqa"}]
    with pytest.raises(ConfigError, match="not a caption task"):
        parse_config(oracle)
    oracle["models"]["experts"] = [{"kind": "reference_captions", "source": "no_such_task"}]
    with pytest.raises(ConfigError, match="unknown task"):
        parse_config(oracle)
    # no experts: the config hash of existing configs is unchanged by the new key
    plain = parse_config({"paradigms": [{"name": "text_conversion/pica"}], "tasks": [{"name": "photos_vqa"}]})
    assert "experts" not in plain.identity()["models"]


# ---------------------------------------------------------------------------------- the oracle
def _photos_samples(task: str):  # noqa: ANN202
    from tasks.datasets import load_dataset
    from tasks.spec import get_task

    spec = get_task(task)
    return load_dataset(spec.dataset, spec.split, spec.dataset_options).samples


def test_oracle_never_returns_the_samples_scored_references():
    from harness.config import ModelsConfig

    reg = build_experts(ModelsConfig(experts=[{"kind": "reference_captions", "source": "photos_caption"}]).experts)
    caption_samples = _photos_samples("photos_caption")
    for s in caption_samples[:3]:
        img = s.load_image()
        everything = reg.run("Get Photo Description", img)  # nothing withheld: the human captions
        assert {f.text for f in everything.facts} == {c.rstrip(".") for c in s.references}
        with pytest.raises(OracleLeak, match="scored against"):
            reg.run("Get Photo Description", img, withheld=s.references)
        # one reference scored: the others remain, that one never
        kept = reg.run("Get Photo Description", img, withheld=s.references[:1]).facts
        assert len(kept) == len(s.references) - 1 and s.references[0].rstrip(".") not in {f.text for f in kept}
    # a VQA question on the same image gets its captions, minus any that equals a scored answer
    vqa = _photos_samples("photos_vqa")[0]
    out = reg.run("Get Photo Description", vqa.load_image(), withheld=vqa.answers)
    assert out.facts and not {f.text.lower() for f in out.facts} & {a.lower() for a in vqa.answers}
    # matching ignores case and punctuation
    res = ExpertResult("", (Fact("Caption", "A Dog runs"), Fact("Caption", "a cat")))
    assert [f.text for f in withhold(res, ["a dog runs."], "oracle").facts] == ["a cat"]
    with pytest.raises(LookupError, match="not in the caption source"):
        reg.run("Get Photo Description", photo())


def _run(cfg_dict: dict, tmp_path: Path, backbones=None):  # noqa: ANN001, ANN202
    from harness.backbones import Backbones
    from harness.cache import ResultCache
    from harness.plan import plan_run
    from harness.runner import Runner

    cfg = parse_config(cfg_dict)
    bb = backbones or Backbones(cfg.models)
    with ResultCache(tmp_path / "cache.sqlite") as cache:
        return Runner(plan_run(cfg), cache=cache, backbones=bb, progress=False).run(), bb


@pytest.mark.slow
def test_oracle_in_a_run_withholds_each_samples_references(tmp_path, tiny_llm_dir):
    llm = {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}
    base = {"seed": 0, "limit": 3, "bootstrap": 10, "generation": {"max_new_tokens": 3},
            "paradigms": [{"name": "text_conversion/pica", "options": {"converters": [{"kind": "expert"}]}}],
            "models": {"llm": llm, "experts": [{"kind": "reference_captions", "source": "photos_caption"}]}}
    results, _ = _run({**base, "tasks": [{"name": "photos_vqa"}]}, tmp_path / "vqa")
    rows = results[0].rows
    assert rows and all(r["error"] is None for r in rows)
    for r in rows:
        ctx = r["trace"]["context"]
        assert ctx.startswith("Caption: ")  # the human captions are the context (PICa's GT-caption ablation)
    # captioning with its own references as the caption source: every sample fails, none sees them
    results, _ = _run({**base, "tasks": [{"name": "photos_caption"}]}, tmp_path / "cap")
    rows = results[0].rows
    assert rows and all("OracleLeak" in (r["error"] or "") or "scored against" in (r["error"] or "") for r in rows)


# -------------------------------------------------------------- both agents, both converters
@pytest.mark.slow
def test_both_agents_and_both_converters_read_the_same_experts(tmp_path, tiny_llm_dir, folders):
    llm = {"source": "local", "name": str(tiny_llm_dir), "device": "cpu", "dtype": "float32"}
    agent_opts = {"max_steps": 1, "step_tokens": 8, "force_first_tool": True}
    cfg = {
        "seed": 0, "limit": 2, "bootstrap": 10, "generation": {"max_new_tokens": 3},
        "paradigms": [
            {"name": "tool_agent/visual_chatgpt", "options": agent_opts},
            {"name": "tool_agent/mm_react", "options": agent_opts},
            {"name": "text_conversion/pica", "options": {"converters": [{"kind": "expert"}]}},
            {"name": "text_conversion/promptcap", "options": {"converters": [{"kind": "expert"}]}},
        ],
        "tasks": [{"name": "photos_vqa"}],
        "models": {"llm": llm, "experts": expert_specs(folders)},
    }
    results, bb = _run(cfg, tmp_path)
    by = {r.unit.paradigm.label: r for r in results}
    assert set(by) == {"tool_agent/visual_chatgpt", "tool_agent/mm_react", "text_conversion/pica", "text_conversion/promptcap"}
    assert all(row["error"] is None for r in results for row in r.rows)
    captions = {}
    for row in by["tool_agent/visual_chatgpt"].rows:  # the upload turn carries the configured captioner's caption
        up = row["trace"]["uploads"][-1]
        assert up["tool"] == "Get Photo Description" and f"The description is: {up['caption']}" in row["trace"]["prompt"]
        captions[row["sample_id"]] = up["caption"]
    for row in by["text_conversion/pica"].rows:  # the converter wrote the same caption into PICa's context
        assert f"Caption: {captions[row['sample_id']]}" in row["trace"]["context"]
        assert "Objects: " in row["trace"]["context"] and "Scene tags: " in row["trace"]["context"]
    for row in by["tool_agent/mm_react"].rows:  # MM-REACT's first call: the combined image understanding
        step = row["trace"]["transcript"][0]
        assert step.get("tool") == "Image Understanding"
        assert f"with description {captions[row['sample_id']]}" in step["observation"]
    # one expert call per (expert, image, query): the four paradigms shared them
    stats = bb.experts.cache_stats()
    assert stats.hits > 0 and stats.misses <= stats.size
    assert bb.experts.get("Get Photo Description").model() is not None


@pytest.mark.slow
def test_smollm2_agent_calls_a_configured_captioner_on_an_embedded_photo(smollm2, folders):
    """A real loop: the packaged SmolLM2 (its first turn opened with MM-REACT's "AI: This is an image.
    Assistant,") writes its own request about a real photo; the parser routes it to MM-REACT's image
    understanding, which calls the configured (tiny BLIP) captioner; the observation is in the transcript.
    (Visual ChatGPT's upload turn with the captioner's caption is checked in the run test above.)"""
    skdata = pytest.importorskip("skimage.data")
    from harness.interface import Request
    from harness.models.tools import ToolBox
    from paradigms.tool_agent import MMReact

    reg = registry(folders)
    bb = SimpleNamespace(llm=smollm2, tools=ToolBox(), experts=reg, scorer=None)
    img = Image.fromarray(skdata.chelsea()).convert("RGB")
    req = Request("chelsea", "chelsea", img, "Write a short caption for this image.", kind="caption", max_new_tokens=12)
    caption = reg.run("Get Photo Description", img).text
    opts = MMReact.Options(tools=("Image Understanding", "Get Photo Description"), max_steps=1, step_tokens=24,
                           force_first_tool=True)
    ans = MMReact(bb, opts, GenerationSettings()).answer_batch([req])[0]
    assert ans.error is None, ans.error
    step = ans.trace["transcript"][0]
    assert step["kind"] == "action" and step["tool"] == "Image Understanding", step
    assert step["observation"].startswith(f"This is an image (451 x 300) with description {caption}.")
    assert f"Assistant: {step['observation']}" in ans.trace["scratchpad"]


def test_runs_record_whether_perception_is_real_or_the_oracle():
    """The ``perception``/``experts`` MLflow params the report reads to put oracle and real rows side by side."""
    from harness.backbones import Backbones
    from harness.config import ModelsConfig
    from harness.registry import get_paradigm

    bb = Backbones(ModelsConfig(experts=[{"kind": "reference_captions", "name": "Human Captions", "source": "photos_caption"},
                                         {"kind": "detector", "model": "facebook/detr-resnet-50"}]))
    gen = GenerationSettings()

    def setup(name: str, **options) -> dict:  # noqa: ANN003
        cls = get_paradigm(name)
        return cls(bb, cls.Options(**options), gen).perception_setup()

    assert setup("text_conversion/pica") == {
        "perception": "packaged", "experts": "objects=packaged; tags=packaged; ocr=packaged; faces=packaged"}
    assert setup("text_conversion/pica", converters=[{"kind": "expert", "name": "Human Captions"}]) == {
        "perception": "oracle", "experts": "Human Captions=reference_captions:photos_caption"}
    assert setup("text_conversion/promptcap", converters=[{"kind": "expert", "name": "Detect Objects"}])["perception"] == "experts"
    vcg = setup("tool_agent/visual_chatgpt")
    assert vcg["perception"] == "oracle" and "Detect Objects=detector:facebook/detr-resnet-50" in vcg["experts"]
    assert setup("tool_agent/visual_chatgpt", tools=["Detect Objects"])["perception"] == "experts"
