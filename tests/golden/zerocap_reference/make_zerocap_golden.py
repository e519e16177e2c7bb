"""Regenerate ``tests/golden/zerocap_reference.json``: the authors' ZeroCap run beside mmbench.

Run with mmbench's venv; it builds the tiny models, lays them out for the reference, and starts
``run_reference.py`` in a separate venv with transformers 4.30 (REF_PYTHON). Steps and the venv
recipe: tests/golden/README.md. Nothing of the authors' code is stored in this repository.

    .venv/bin/python tests/golden/zerocap_reference/make_zerocap_golden.py REF_CODE_DIR REF_PYTHON \
        --commit <their commit> [--work DIR] [--check-multi-gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from tests.guided_reference import EOS, build_clip, skimage_images, weights_digest  # noqa: E402
from tests.test_zerocap_reference import IMAGES, SETTINGS, build_gpt2, forbidden_ids  # noqa: E402


def layout_for_reference(gpt2: Path, clip: Path, work: Path) -> None:
    """The same weights in the file formats transformers 4.30 reads (tokenizer files only differ).

    ``gpt2-medium/``: their ``GPT2Tokenizer.from_pretrained('gpt2-medium')`` is the slow tokenizer,
    which reads vocab.json + merges.txt (transformers 5 saves tokenizer.json only). ``clip-ref/``:
    tokenizer.json with merges as "a b" strings (tokenizers 0.13's format).
    """
    g = work / "gpt2-medium"
    g.mkdir(parents=True, exist_ok=True)
    t = json.loads((gpt2 / "tokenizer.json").read_text())
    (g / "vocab.json").write_text(json.dumps(t["model"]["vocab"], ensure_ascii=False))
    merges = "".join(f"{a} {b}\n" for a, b in t["model"]["merges"])
    (g / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    added = {a["content"]: a["id"] for a in t["added_tokens"] if a["content"] not in t["model"]["vocab"]}
    (g / "added_tokens.json").write_text(json.dumps(added))
    (g / "special_tokens_map.json").write_text(json.dumps({"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}))
    (g / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 256, "add_prefix_space": False}))
    c = work / "clip-ref"
    c.mkdir(parents=True, exist_ok=True)
    ct = json.loads((clip / "tokenizer.json").read_text())
    ct["model"]["merges"] = [" ".join(m) for m in ct["model"]["merges"]]
    ct["model"].pop("ignore_merges", None)
    (c / "tokenizer.json").write_text(json.dumps(ct, ensure_ascii=False))
    clip_files = ("config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json")
    for src, dst, names in ((gpt2, g, ("config.json", "model.safetensors")), (clip, c, clip_files)):
        for n in names:
            if not (dst / n).exists():
                os.symlink(src / n, dst / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ref_code_dir", type=Path, help="their run.py, model/, forbidden_tokens.npy (git archive HEAD)")
    ap.add_argument("ref_python", help="python of the transformers-4.30 venv")
    ap.add_argument("--commit", required=True, help="the commit of YoadTew/zero-shot-image-to-text used")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--check-multi-gpu", action="store_true", help="also run their --multi_gpu variant and compare")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "golden" / "zerocap_reference.json")
    a = ap.parse_args()

    import numpy as np
    import tokenizers
    import torch
    import transformers
    from transformers import AutoTokenizer

    work = a.work or Path(tempfile.mkdtemp(prefix="zerocap_ref_"))
    gpt2, clip = build_gpt2(work / "models" / "gpt2"), build_clip(work / "models" / "clip")
    layout_for_reference(gpt2, clip, work)
    for name, im in skimage_images().items():
        im.save(work / f"{name}.png")  # lossless: their run.py opens a path
    forbidden = forbidden_ids(AutoTokenizer.from_pretrained(gpt2))
    np.save(work / "forbidden_tokens.npy", np.array(forbidden, dtype=np.int64))
    settings = [dict(s, images=list(IMAGES)) for s in SETTINGS]
    (work / "settings.json").write_text(json.dumps(settings))

    def reference(multi: bool) -> dict:
        out = work / ("ref_multi.json" if multi else "ref.json")
        env = dict(os.environ, ZC_CLIP_DIR=str(work / "clip-ref"), ZC_MULTI_GPU="1" if multi else "0")
        cmd = [a.ref_python, str(HERE / "run_reference.py"), str(a.ref_code_dir.resolve()), str(work),
               str(work / "settings.json"), str(out)]  # fmt: skip
        subprocess.run(cmd, env=env, check=True)
        return json.loads(out.read_text())

    ref = reference(False)
    ctx = {tuple(r["context_ids"]) for r in ref["runs"]}
    assert len(ctx) == 1, ctx
    golden = {
        "what": "final beams (token ids, length-normalised scores) and CLIP's pick of the authors' ZeroCap "
        "(run.py --reset_context_delta) on tests/test_zerocap_reference.py's tiny GPT-2 + CLIP",
        "reference": {
            "repo": "YoadTew/zero-shot-image-to-text",
            "commit": a.commit,
            "files": ["run.py", "model/ZeroCLIP.py"],
            "shims": [
                "clip package: tests/golden/zerocap_reference/shim/clip.py over the tiny transformers CLIPModel",
                "'gpt2-medium' resolves to a local folder holding the tiny GPT-2 (slow-tokenizer files)",
                "forbidden_tokens.npy: the tiny vocabulary's digit tokens (theirs: 917 GPT-2 ids)",
            ],
        },
        "versions": {
            "reference_side": ref["versions"],
            "mmbench_side": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "tokenizers": tokenizers.__version__},  # fmt: skip
        },
        "weights": {"gpt2": weights_digest(gpt2), "clip": weights_digest(clip)},
        "context_ids": list(ctx.pop()),
        "forbidden_ids": forbidden,
        "settings": list(SETTINGS),
        "runs": [{k: v for k, v in r.items() if k not in ("context_ids", "seconds")} for r in ref["runs"]],
    }
    if a.check_multi_gpu:
        multi = reference(True)
        same = [(r["beams"], r["best"]) == (m["beams"], m["best"]) for r, m in zip(ref["runs"], multi["runs"])]
        golden["reference"]["multi_gpu_variant_identical"] = f"{sum(same)}/{len(same)}"
    a.out.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {a.out} ({len(golden['runs'])} runs; work folder {work})")


if __name__ == "__main__":
    main()
