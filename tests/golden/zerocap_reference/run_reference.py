"""Reference side of ``tests/golden/zerocap_reference.json``: the authors' ZeroCap, run as written.

Runs in a throwaway venv with transformers 4.30 (their code needs the tuple ``past_key_values`` of
transformers 4.x), never in mmbench's. It imports the authors' ``run.py`` and
``model/ZeroCLIP.py`` (+ ``ZeroCLIP_batched.py``) unchanged from REF_CODE_DIR, builds the argument
namespace with their own ``get_args()`` (``--reset_context_delta`` as in all their README commands)
and calls their ``run(args, img_path)``. Nothing of theirs is edited; it only *observes*:

- ``log_info`` (which ``generate_text`` calls once per step, after the beam update) is replaced by a
  recorder that reads ``gen_tokens``/``scores``/``seq_lengths``/``is_stopped`` from the caller's frame;
- ``get_next_probs`` is wrapped to record the prompt ids and each step's ranking margin;
- ``CLIPTextGenerator.run`` is wrapped to record the beams' captions; CLIP's pick is read from their
  printed ``best clip:`` line.

usage (see tests/golden/README.md; ``make_zerocap_golden.py`` calls it):
    ZC_CLIP_DIR=WORK/clip-ref REF_PYTHON run_reference.py REF_CODE_DIR WORK SETTINGS_JSON OUT_JSON
WORK holds ``gpt2-medium/`` (their hard-coded ``from_pretrained('gpt2-medium')`` resolves to this local
folder), ``forbidden_tokens.npy`` and the images. ``shim/clip.py`` stands in for OpenAI's ``clip``.
ZC_MULTI_GPU=1 runs their ``--multi_gpu`` variant (``ZeroCLIP_batched.py``) instead.
"""

import contextlib
import io
import json
import os
import sys
import time

ref_dir, work, settings_path, out_path = (os.path.abspath(x) for x in sys.argv[1:5])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim"))
sys.path.insert(1, os.path.abspath(ref_dir))
os.chdir(work)

import torch  # noqa: E402
import transformers  # noqa: E402

import run as ref_run  # noqa: E402  (the authors' run.py)
from model import ZeroCLIP, ZeroCLIP_batched  # noqa: E402

MULTI = os.environ.get("ZC_MULTI_GPU") == "1"
state: dict = {}


def log_info(text, verbose=True):  # noqa: ANN001, ANN201
    f = sys._getframe(1).f_locals  # generate_text's state after this step's beam update
    state["steps"].append({
        "ids": f["gen_tokens"].tolist(), "lengths": f["seq_lengths"].tolist(),
        "avg": (f["scores"] / f["seq_lengths"]).tolist(), "stopped": f["is_stopped"].tolist(),
    })  # fmt: skip


def observe(cls):  # noqa: ANN001, ANN201
    orig_probs, orig_run = cls.get_next_probs, cls.run

    def get_next_probs(self, i, context_tokens):  # noqa: ANN001, ANN202
        if i == 0:
            state["context_ids"] = context_tokens[0].tolist()
        p = orig_probs(self, i, context_tokens)
        # margin of this step's choice: the beam-th vs the (beam+1)-th candidate, ranked as generate_text ranks
        logits, beam = p.log(), self._zc_beam
        if i == 0:
            top = logits.view(-1).topk(beam + 1).values
        else:
            prev = state["steps"][-1]
            stopped = torch.tensor(prev["stopped"])
            lengths = torch.tensor(prev["lengths"])
            scores = torch.tensor(prev["avg"]) * lengths
            logits = logits.clone()
            logits[stopped] = -float("inf")
            logits[stopped, 0] = 0
            top = ((scores[:, None] + logits) / (lengths + (~stopped).float())[:, None]).view(-1).topk(beam + 1).values
        state["margins"].append(float(top[beam - 1] - top[beam]))
        return p

    def run(self, image_features, cond_text, beam_size):  # noqa: ANN001, ANN202
        self._zc_beam = beam_size
        out = orig_run(self, image_features, cond_text, beam_size)
        state["captions"] = list(out)
        return out

    cls.get_next_probs, cls.run = get_next_probs, run


for mod in (ZeroCLIP, ZeroCLIP_batched):
    mod.log_info = log_info
    observe(mod.CLIPTextGenerator)

runs = []
for s in json.load(open(settings_path)):
    for image in s["images"]:
        sys.argv = ["run.py", "--reset_context_delta", "--caption_img_path", f"{image}.png"]
        sys.argv += ["--multi_gpu"] if MULTI else []
        for k, v in s["args"].items():
            sys.argv += [f"--{k}", str(v)]
        args = ref_run.get_args()
        state.clear()
        state.update(steps=[], margins=[])
        buf = io.StringIO()
        t0 = time.time()
        with contextlib.redirect_stdout(buf):
            ref_run.run(args, img_path=args.caption_img_path)
        best = [x for x in buf.getvalue().splitlines() if x.startswith("best clip: ")][-1][len("best clip: "):]
        last = state["steps"][-1]
        runs.append({
            "setting": s["name"], "image": image, "context_ids": state["context_ids"],
            "beams": [ids[: int(n)] for ids, n in zip(last["ids"], last["lengths"])],
            "beam_scores": [round(x, 6) for x in last["avg"]], "captions_by_score": state["captions"], "best": best,
            "min_margin": round(min(state["margins"]), 7), "seconds": round(time.time() - t0, 1),
        })  # fmt: skip
        print(s["name"], image, repr(best), f"{runs[-1]['seconds']}s", "min margin", runs[-1]["min_margin"], flush=True)
versions = {"transformers": transformers.__version__, "torch": torch.__version__}
versions["variant"] = "multi_gpu" if MULTI else "single"
json.dump({"versions": versions, "runs": runs}, open(out_path, "w"), indent=1)
