"""Per-sample explorer data: each sample's image thumbnail and every paradigm's answer.

The image is reloaded from the dataset the run recorded (params ``dataset_loader``/``dataset_split``/
``dataset_options``), so the report shows exactly what the paradigms saw, without storing images in
MLflow. A sample whose image cannot be reloaded gets the reason instead of a thumbnail.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections import defaultdict
from typing import Any, Callable, Sequence

from harness.leaderboard.collect import UnitRun

log = logging.getLogger(__name__)

#: When a sample counts as "right", per metric family: (test on the per-sample primary score, words).
RIGHT_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "vqa_accuracy": (lambda s: s > 0, "VQA accuracy > 0 (at least one human gave this answer; 100 = 3 or more did)"),
    "exact_match": (lambda s: s >= 100.0, "exact match of the normalised answer (score 100)"),
    "choice_accuracy": (lambda s: s >= 100.0, "the chosen option is the correct one (score 100)"),
    "caption": (lambda s: s >= 0.5, "per-image CIDEr-D ≥ 0.5 (≥ 50 on the ×100 scale papers print)"),
}
THUMB_PX = 160


def right_rule(metric_family: str) -> tuple[Callable[[float], bool], str]:
    return RIGHT_RULES.get(metric_family, (lambda s: s > 0, "per-sample score > 0"))


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def thumbnail(image: Any) -> str:
    """Small JPEG as a data: URI."""
    img = image.convert("RGB")
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnails(unit: UnitRun, ids: Sequence[str]) -> dict[str, str]:
    """sample id → data URI, or → 'error: reason' when the image cannot be reloaded."""
    from tasks.datasets import load_dataset

    loader, split = unit.params.get("dataset_loader", ""), unit.params.get("dataset_split", "")
    try:
        options = json.loads(unit.params.get("dataset_options") or "{}")
        ds = load_dataset(loader, split, options)
    except Exception as exc:  # noqa: BLE001 - the data may live only on the machine that ran it
        why = f"error: dataset {loader!r} split {split!r} could not be reloaded here ({type(exc).__name__}: {exc})"
        return {i: why for i in ids}
    by_id = {s.sample_id: s for s in ds.samples}
    out = {}
    for i in ids:
        s = by_id.get(i)
        if s is None:
            out[i] = f"error: sample {i!r} is not in {loader}/{split} as loaded here"
            continue
        try:
            out[i] = thumbnail(s.load_image())
        except Exception as exc:  # noqa: BLE001 - one bad image must not stop the report
            out[i] = f"error: image could not be loaded ({type(exc).__name__}: {exc})"
    return out


def _transcript(trace: Any) -> str:
    if not isinstance(trace, dict) or not trace.get("transcript"):
        return ""
    t = trace["transcript"]
    return t if isinstance(t, str) else json.dumps(t, indent=1, ensure_ascii=False, default=str)


def explorer_data(units: Sequence[UnitRun], limit: int = 200, thumbnails: bool = True) -> dict[str, Any]:
    """JSON-ready explorer content, one entry per task (first ``limit`` samples of each)."""
    by_task: dict[str, list[UnitRun]] = defaultdict(list)
    for u in units:
        by_task[u.task].append(u)
    tasks: dict[str, Any] = {}
    for task, us in sorted(by_task.items()):
        test, words = right_rule(us[0].metric_family)
        ids: list[str] = []
        for u in us:
            ids += [r["sample_id"] for r in u.rows if r["sample_id"] not in ids]
        ids = ids[:limit]
        thumbs = _thumbnails(us[0], ids) if thumbnails else {i: "error: thumbnails turned off" for i in ids}
        settings = sorted({(u.shots, u.trial) for u in us})
        samples: dict[str, dict[str, Any]] = {}
        for u in us:
            setting = f"{u.shots}-shot · trial {u.trial}"
            col = f"score_{u.primary}"
            for r in u.rows:
                sid = r["sample_id"]
                if sid not in ids:
                    continue
                s = samples.setdefault(sid, {
                    "id": sid, "question": r.get("question", ""), "references": r.get("references", []),
                    "answers": r.get("answers", []), "choices": r.get("choices", []),
                    "thumb": thumbs.get(sid, ""), "by": {}})
                score = r.get(col)
                s["by"].setdefault(setting, {})[u.paradigm] = {
                    "prediction": r.get("prediction", ""), "error": r.get("error") or "",
                    "score": score, "right": bool(score is not None and test(float(score))),
                    "transcript": _transcript(r.get("trace")),
                }
        for s in samples.values():
            s["disagree"] = {
                k: len({_norm(a["prediction"]) for a in v.values()}) > 1 or len({a["right"] for a in v.values()}) > 1
                for k, v in s["by"].items()
            }
        tasks[task] = {"kind": us[0].task_kind, "metric": us[0].primary, "right": words,
                       "settings": [f"{k}-shot · trial {t}" for k, t in settings],
                       "paradigms": sorted({u.paradigm for u in us}),
                       "samples": [samples[i] for i in ids if i in samples]}
    return {"tasks": tasks,
            "disagree": "paradigms disagree when their answers differ (lower-cased, punctuation removed) "
                        "or when some are right and others wrong"}
