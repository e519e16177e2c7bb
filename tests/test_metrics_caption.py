"""Caption metrics pinned to pycocoevalcap run the canonical COCO way (golden numbers), plus the
properties mmbench adds: corpus-level bootstrap, one Java tokenizer call, honest unavailability."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from tasks.metrics import MeteorProcess, score_captions
from tasks.metrics import tokenize as tok_mod
from tasks.metrics.bootstrap import bootstrap_indices, counts_from_indices
from tasks.metrics.caption import BLEU_NAMES, _as_dicts, _bootstrap, resamplable_captions, tokenize_corpus
from tasks.metrics.external import score_coco_results
from tasks.metrics.meteor import meteor_from_stats
from tasks.metrics.spice import CORENLP_JARS, SPICE_JAR_NAME, spice_unavailable_reason
from tasks.metrics.tokenize import fallback_tokenize, ptb_tokenize

GOLDEN = json.loads((Path(__file__).parent / "golden" / "caption_golden.json").read_text(encoding="utf-8"))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OFFICIAL = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
needs_java = pytest.mark.skipif(tok_mod.find_java() is None, reason="java is not installed: PTB/METEOR golden tests need it")


def _flickr_captions() -> dict[str, list[str]]:
    path = SHARED / "flickr8k-subset" / "captions.txt"
    if not path.exists():
        pytest.skip(f"{path} is absent (development/CI data; see ../shared/data/README.md)")
    caps: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            caps[row["image"]].append(row["caption"])
    return caps


@pytest.fixture(scope="module")
def meteor():
    """One METEOR JVM for the whole module (it takes seconds to load its paraphrase table)."""
    if tok_mod.find_java() is None:
        pytest.skip("java is not installed")
    with MeteorProcess() as proc:
        yield proc


@pytest.fixture(scope="module")
def flickr(meteor):
    caps = _flickr_captions()
    g = GOLDEN["flickr8k"]
    refs = {i: [caps[i][k] for k in g["reference_indices"]] for i in g["image_ids"]}
    preds = {i: caps[i][g["prediction_index"]] for i in g["image_ids"]}
    return refs, preds, score_captions(refs, preds, n_boot=200, seed=0, meteor_process=meteor)


@pytest.fixture(scope="module")
def synthetic(meteor):
    s = GOLDEN["synthetic"]
    return score_captions(s["references"], s["predictions"], n_boot=200, seed=0, meteor_process=meteor)


@needs_java
def test_synthetic_fixture_equals_pycocoevalcap(synthetic):
    for name in OFFICIAL:
        assert synthetic.values[name] == pytest.approx(GOLDEN["synthetic"]["expected"][name], abs=1e-4), name
    assert synthetic.primary == "CIDEr"
    assert synthetic.info["tokenizer"] == "ptb"
    assert list(synthetic.values)[:7] == list(OFFICIAL)


@needs_java
def test_flickr8k_fixture_equals_pycocoevalcap(flickr):
    _, _, result = flickr
    for name in OFFICIAL:
        assert result.values[name] == pytest.approx(GOLDEN["flickr8k"]["expected"][name], abs=1e-4), name


@needs_java
def test_per_image_cider_equals_pycocoevalcap(synthetic):
    expected = GOLDEN["synthetic"]["expected_per_sample"]["CIDEr"]
    ids = list(GOLDEN["synthetic"]["references"])
    assert synthetic.per_sample["CIDEr"] == pytest.approx([expected[i] for i in ids], abs=1e-6)
    assert synthetic.per_sample["CIDEr"][ids.index("s3")] == 0.0  # the empty prediction
    assert set(synthetic.per_sample) == set(synthetic.values)


@needs_java
def test_cider_is_corpus_level_not_one_sample_at_a_time(flickr):
    refs, preds, result = flickr
    # pycocoevalcap's per-image CIDEr uses the corpus document frequencies, so their mean is the corpus value
    assert np.mean(result.per_sample["CIDEr"]) == pytest.approx(result.values["CIDEr"], abs=1e-12)
    # HELM-style scoring, one image per Cider call: idf = log(1) - log(df) = 0, so every score collapses
    tc = tokenize_corpus(refs, preds)
    gts, res = _as_dicts(tc)
    one_at_a_time = np.mean([Cider().compute_score({k: gts[k]}, {k: res[k]})[0] for k in gts])
    assert one_at_a_time == pytest.approx(GOLDEN["flickr8k"]["expected"]["_mean_of_single_image_CIDEr"])
    assert abs(one_at_a_time - result.values["CIDEr"]) > 0.5
    # and an image's CIDEr depends on the rest of the corpus (df), unlike a per-sample metric
    first = next(iter(refs))
    small = score_captions({k: refs[k] for k in list(refs)[:5]}, {k: preds[k] for k in list(refs)[:5]},
                           n_boot=0, tokenizer="fallback")
    big = score_captions(refs, preds, n_boot=0, tokenizer="fallback")
    assert small.per_sample["CIDEr"][0] != pytest.approx(big.per_sample["CIDEr"][list(refs).index(first)], abs=1e-6)


@needs_java
def test_resample_recomputation_equals_pycocoevalcap_on_the_resampled_corpus(flickr, meteor):
    """With ``cider_df="resample"`` a resample is a new corpus: duplicated images are separate
    documents for CIDEr's df. BLEU and METEOR are recomputed at corpus level either way."""
    refs, preds, _ = flickr
    stats = resamplable_captions(refs, preds, meteor_process=meteor, cider_df="resample")
    tc = tokenize_corpus(refs, preds)
    rng = np.random.default_rng(3)
    for _ in range(3):
        idx = rng.integers(0, len(tc.ids), len(tc.ids))
        gts = {p: list(tc.refs[i]) for p, i in enumerate(idx)}
        res = {p: [tc.hyps[i]] for p, i in enumerate(idx)}
        ours = stats.resampled(counts_from_indices(idx[None, :], len(tc.ids)))
        assert ours["CIDEr"][0] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-10)
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        for k, name in enumerate(BLEU_NAMES):
            assert ours[name][0] == pytest.approx(bleu[k], abs=1e-10)
        java = meteor.evaluate(stats.meteor[idx])
        assert ours["METEOR"][0] == pytest.approx(java, abs=1e-10)


@needs_java
def test_default_cider_resample_keeps_the_corpus_document_frequencies(flickr, meteor):
    """By default a resample's CIDEr is the mean of pycocoevalcap's per-image CIDEr (computed once,
    with the evaluated corpus's df) over the resampled images, repeats counted."""
    refs, preds, result = flickr
    stats = resamplable_captions(refs, preds, meteor=False)
    per = np.asarray(result.per_sample["CIDEr"])
    rng = np.random.default_rng(5)
    for _ in range(3):
        idx = rng.integers(0, stats.n, stats.n)
        ours = stats.resampled(counts_from_indices(idx[None, :], stats.n), only="CIDEr")["CIDEr"][0]
        assert ours == pytest.approx(per[idx].mean(), abs=1e-12)


def test_cider_replicates_are_centred_on_the_estimate_only_with_fixed_df():
    """Recounting df on a resample makes every drawn-twice image two documents, which lowers the idf of
    its n-grams: the replicates sit below the corpus value (the point estimate ends near the top of
    its own CI). With the corpus's df they are centred on it. 40 real Flickr8k images, one human
    caption scored against the other four."""
    caps = _flickr_captions()
    ids = sorted(caps)[:40]
    refs = {i: caps[i][1:] for i in ids}
    preds = {i: caps[i][0] for i in ids}
    point = score_captions(refs, preds, n_boot=0, tokenizer="fallback").values["CIDEr"]
    w = counts_from_indices(bootstrap_indices(len(ids), 1000, 0), len(ids))
    shift = {}
    for mode in ("fixed", "resample"):
        stats = resamplable_captions(refs, preds, tokenizer="fallback", meteor=False, cider_df=mode)
        shift[mode] = stats.resampled(w, only="CIDEr")["CIDEr"].mean() / point - 1
    assert abs(shift["fixed"]) < 0.01, shift
    assert shift["resample"] < -0.03, shift


@needs_java
def test_meteor_aggregation_matches_java_on_random_subsets(flickr, meteor):
    refs, preds, _ = flickr
    stats = resamplable_captions(refs, preds, meteor_process=meteor).meteor
    rng = np.random.default_rng(0)
    for _ in range(15):
        idx = rng.integers(0, len(stats), rng.integers(1, 2 * len(stats)))
        ours = meteor_from_stats(stats, counts_from_indices(idx[None, :], len(stats)))[0]
        assert ours == pytest.approx(meteor.evaluate(stats[idx]), abs=1e-12)
    # a single segment's corpus score is its segment score
    assert meteor_from_stats(stats, np.eye(len(stats))[:3]) == pytest.approx(
        [meteor.evaluate(stats[i]) for i in range(3)], abs=1e-12)


@needs_java
def test_identity_resample_reproduces_point_estimates(flickr, meteor):
    refs, preds, result = flickr
    stats = resamplable_captions(refs, preds, meteor_process=meteor)
    ident = stats.resampled(np.ones((1, stats.n)))
    for name in OFFICIAL:
        assert ident[name][0] == pytest.approx(result.values[name], abs=1e-12), name


@needs_java
def test_bootstrap_cis_are_seeded_and_bracket_the_estimate(flickr, meteor, synthetic):
    refs, preds, result = flickr
    stats = resamplable_captions(refs, preds, meteor_process=meteor)
    again = _bootstrap(stats, 200, 0)
    other = _bootstrap(stats, 200, 1)
    for name in OFFICIAL:
        lo, hi = result.ci[name]
        assert (lo, hi) == pytest.approx(again[name], abs=1e-12)
        assert other[name] != pytest.approx(again[name], abs=1e-9)
        assert lo < result.values[name] < hi, name
    assert "200 resamples" in result.info["ci"]


def test_bootstrap_covers_the_java_free_metrics():
    """Without Java (fallback tokenizer, no METEOR) the bootstrap gives BLEU, ROUGE-L and CIDEr CIs.
    Its cost is measured in ``benchmarks/bench_bootstrap.py``, not asserted here."""
    rng = np.random.default_rng(0)
    words = "a dog cat man woman runs sits on the grass red blue ball street water jumps in".split()

    def sent() -> str:
        return " ".join(rng.choice(words, rng.integers(6, 13)))

    refs = {i: [sent() for _ in range(5)] for i in range(50)}
    preds = {i: sent() for i in range(50)}
    stats = resamplable_captions(refs, preds, tokenizer="fallback", meteor=False)
    cis = _bootstrap(stats, 200, 0)
    assert set(cis) == {*BLEU_NAMES, "ROUGE_L", "CIDEr"}
    assert all(lo <= hi for lo, hi in cis.values())


@needs_java
def test_empty_prediction_is_wrong_and_lowers_the_corpus_score(synthetic, meteor):
    s = GOLDEN["synthetic"]
    preds = dict(s["predictions"], s1="")
    worse = score_captions(s["references"], preds, n_boot=0, meteor_process=meteor)
    assert worse.values["CIDEr"] < synthetic.values["CIDEr"]
    assert worse.per_sample["CIDEr"][0] == 0.0 and worse.per_sample["METEOR"][0] == 0.0
    assert worse.info["n_empty_predictions"] == "2"
    assert worse.ci == {}


def test_mismatched_ids_and_bad_inputs_raise():
    refs = {"a": ["a dog"], "b": ["a cat"]}
    with pytest.raises(ValueError, match="missing predictions"):
        score_captions(refs, {"a": "dog"}, tokenizer="fallback")
    with pytest.raises(ValueError, match="without references"):
        score_captions(refs, {"a": "dog", "b": "cat", "c": "x"}, tokenizer="fallback")
    with pytest.raises(ValueError, match="non-empty list"):
        score_captions({"a": []}, {"a": "dog"}, tokenizer="fallback")
    with pytest.raises(TypeError):
        score_captions({"a": ["a dog"]}, {"a": None}, tokenizer="fallback")


@needs_java
def test_one_ptb_java_call_per_scoring_call(monkeypatch, meteor):
    calls = []
    real_run = tok_mod.subprocess.run

    def counting_run(*args, **kwargs):
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(tok_mod.subprocess, "run", counting_run)
    s = GOLDEN["synthetic"]
    score_captions(s["references"], s["predictions"], n_boot=10, meteor_process=meteor)
    assert len(calls) == 1 and "edu.stanford.nlp.process.PTBTokenizer" in calls[0]


@needs_java
def test_ptb_keeps_alignment_with_empty_texts_and_odd_line_breaks():
    texts = ["A dog.", "", "Two\r\ncats (black)", "line\u2028break", "", "Don't stop!", ""]
    out = ptb_tokenize(texts)
    assert out == ["a dog", "", "two cats -lrb- black -rrb-", "line break", "", "do n't stop", ""]


def test_fallback_tokenizer_mimics_ptb_on_common_cases():
    texts = ["A dog, running.", "Don't stop!", 'He said "hi" (twice)', "1,000 t-shirts cost $5.", "Mr. Smith's cat..."]
    assert fallback_tokenize(texts) == ["a dog running", "do n't stop", "he said hi -lrb- twice -rrb-",
                                        "1,000 t-shirts cost $ 5", "mr. smith 's cat"]


@needs_java
def test_fallback_tokenizer_agrees_with_ptb_on_real_captions():
    caps = [c for cs in _flickr_captions().values() for c in cs]
    ptb, fb = ptb_tokenize(caps), fallback_tokenize(caps)
    agree = np.mean([a == b for a, b in zip(ptb, fb)])
    assert agree > 0.995


def test_without_java_metrics_that_need_it_are_unavailable_not_zero(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    s = GOLDEN["synthetic"]
    r = score_captions(s["references"], s["predictions"], n_boot=50)
    assert r.info["tokenizer"] == "fallback-regex"
    assert "METEOR" not in r.values and "SPICE" not in r.values
    assert "java" in r.unavailable["METEOR"].lower() and "java" in r.unavailable["SPICE"].lower()
    for name in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):  # close to the PTB numbers, not equal by contract
        assert r.values[name] == pytest.approx(GOLDEN["synthetic"]["expected"][name], abs=0.03), name
    with pytest.raises(RuntimeError, match="java"):
        score_captions(s["references"], s["predictions"], tokenizer="ptb")


def test_spice_is_unavailable_without_corenlp_and_never_downloads(monkeypatch, tmp_path):
    import pycocoevalcap.spice.get_stanford_models as gsm

    def no_download(*a, **k):
        raise AssertionError("SPICE models download attempted")

    monkeypatch.setattr(gsm, "urlretrieve", no_download)
    reason = spice_unavailable_reason()
    if reason is None:
        pytest.skip("CoreNLP jars are installed here; SPICE is available")
    r = score_captions({"a": ["a dog runs"]}, {"a": "a dog"}, n_boot=0, tokenizer="fallback")
    assert "SPICE" in r.unavailable and "SPICE" not in r.values
    # presence detection looks for exactly the files pycocoevalcap would download
    (tmp_path / "lib").mkdir()
    (tmp_path / SPICE_JAR_NAME).write_bytes(b"")
    for jar in CORENLP_JARS:
        assert spice_unavailable_reason(tmp_path) is not None
        (tmp_path / "lib" / jar).write_bytes(b"")
    if tok_mod.find_java() is not None:
        assert spice_unavailable_reason(tmp_path) is None


@needs_java
def test_score_coco_results_files(tmp_path, meteor):
    s = GOLDEN["synthetic"]
    ids = {k: n for n, k in enumerate(s["references"], start=1)}
    ann = {"images": [{"id": n} for n in ids.values()] + [{"id": 99}],
           "annotations": [{"image_id": ids[k], "id": 10 * ids[k] + j, "caption": c}
                           for k, caps in s["references"].items() for j, c in enumerate(caps)]}
    results = [{"image_id": ids[k], "caption": p} for k, p in s["predictions"].items()]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "res.json").write_text(json.dumps(results))
    r = score_coco_results(tmp_path / "ann.json", tmp_path / "res.json", n_boot=0, meteor_process=meteor)
    for name in OFFICIAL:
        assert r.values[name] == pytest.approx(s["expected"][name], abs=1e-4)
    (tmp_path / "part.json").write_text(json.dumps(results[:-1]))
    with pytest.raises(ValueError, match="no result"):
        score_coco_results(tmp_path / "ann.json", tmp_path / "part.json", n_boot=0)
    skipped = score_coco_results(tmp_path / "ann.json", tmp_path / "part.json", missing="skip", n_boot=0,
                                 meteor_process=meteor)
    emptied = score_coco_results(tmp_path / "ann.json", tmp_path / "part.json", missing="empty", n_boot=0,
                                 meteor_process=meteor)
    assert skipped.info["n_samples"] == "5" and emptied.info["n_samples"] == "6"
    assert emptied.info["n_empty_predictions"] == "2"
    (tmp_path / "dup.json").write_text(json.dumps(results + results[:1]))
    with pytest.raises(ValueError, match="two results"):
        score_coco_results(tmp_path / "ann.json", tmp_path / "dup.json", n_boot=0)
    (tmp_path / "unknown.json").write_text(json.dumps(results + [{"image_id": 12345, "caption": "x"}]))
    with pytest.raises(ValueError, match="not in the annotations"):
        score_coco_results(tmp_path / "ann.json", tmp_path / "unknown.json", n_boot=0)


def test_metrics_registry_caption_uses_sample_references(monkeypatch, tmp_path):
    from PIL import Image

    from tasks.base import Sample
    from tasks.metrics import METRICS

    monkeypatch.setenv("PATH", str(tmp_path))  # no Java: fast fallback path, same wiring
    s = GOLDEN["synthetic"]
    samples = [Sample(sample_id=k, image_ref="none", load_image=lambda: Image.new("RGB", (2, 2)),
                      references=tuple(v)) for k, v in s["references"].items()]
    preds = [s["predictions"][k] for k in s["references"]]
    r = METRICS["caption"](samples, preds, n_boot=30, seed=0)
    direct = score_captions(s["references"], s["predictions"], n_boot=30, seed=0)
    assert r.values == direct.values and r.ci == direct.ci and r.per_sample == direct.per_sample
    assert r.primary == "CIDEr" and len(r.per_sample["CIDEr"]) == len(samples)
    with pytest.raises(ValueError):
        METRICS["caption"](samples, preds[:-1], n_boot=30, seed=0)
