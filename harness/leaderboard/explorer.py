"""Per-sample explorer data: each sample's image, its demonstrations, and every setup's answer with why.

The image is reloaded from the dataset the run recorded (params ``dataset_loader``/``dataset_split``/
``dataset_options``), so the report shows exactly what the paradigms saw, without storing images in
MLflow; demonstrations come from the support split (``support_split``) or, for binding episodes,
from the query sample's own episode. A sample whose image cannot be reloaded gets the reason instead
of a thumbnail. What each paradigm did — the prompt, the converted text, tool observations, guided-
decoding candidates — is read from the sample's logged trace.
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
from harness.leaderboard.tables import data_labels, scale, setup_labels

log = logging.getLogger(__name__)

#: When a sample counts as right, per metric family: (test on the raw per-sample primary score, words).
#: VQA scores between 0 and 100 are partial credit and shown as such, never as "right".
RIGHT_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "vqa_accuracy": (lambda s: s >= 100.0, "VQA accuracy 100 (3 or more of the humans gave this answer); "
                                           "between 0 and 100 is partial credit, shown as the percentage"),
    "exact_match": (lambda s: s >= 100.0, "exact match of the normalised answer (score 100)"),
    "choice_accuracy": (lambda s: s >= 100.0, "the chosen option is the correct one (score 100)"),
    "caption": (lambda s: s >= 0.5, "per-image CIDEr-D ≥ 50 on the report's ×100 scale"),
}
THUMB_PX = 160
DEMO_PX = 72
#: Most demonstration thumbnails per data set (200 samples × 32 shots would make a page of megabytes).
DEMO_THUMBS_MAX = 300
#: Longest text kept per trace section (the full trace stays in predictions.jsonl).
SECTION_CHARS = 6000


def right_rule(metric_family: str) -> tuple[Callable[[float], bool], str]:
    return RIGHT_RULES.get(metric_family, (lambda s: s > 0, "per-sample score > 0"))


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def thumbnail(image: Any, px: int = THUMB_PX) -> str:
    """Small JPEG as a data: URI."""
    img = image.convert("RGB")
    img.thumbnail((px, px))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _load(unit: UnitRun, split: str) -> tuple[dict[str, Any] | None, str]:
    from tasks.datasets import load_dataset

    loader = unit.params.get("dataset_loader", "")
    try:
        options = json.loads(unit.params.get("dataset_options") or "{}")
        ds = load_dataset(loader, split, options)
    except Exception as exc:  # noqa: BLE001 - the data may live only on the machine that ran it
        return None, f"error: dataset {loader!r} split {split!r} could not be reloaded here ({type(exc).__name__}: {exc})"
    return {s.sample_id: s for s in ds.samples}, ""


def _thumb(sample: Any, px: int) -> str:
    try:
        return thumbnail(sample.load_image(), px)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the report
        return f"error: image could not be loaded ({type(exc).__name__}: {exc})"


def _thumbnails(unit: UnitRun, ids: Sequence[str], demo_ids: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(sample id → data URI or 'error: reason', demonstration id → the same)."""
    split = unit.params.get("dataset_split", "")
    by_id, why = _load(unit, split)
    if by_id is None:
        return {i: why for i in ids}, {i: why for i in demo_ids}
    out = {}
    for i in ids:
        s = by_id.get(i)
        out[i] = _thumb(s, THUMB_PX) if s is not None else \
            f"error: sample {i!r} is not in {unit.params.get('dataset_loader')}/{split} as loaded here"
    pool: dict[str, Any] = {}
    for i in ids:  # binding episodes carry their own demonstrations
        for e in getattr(by_id.get(i), "episode", ()) or ():
            pool[e.sample_id] = e
    support = unit.params.get("support_split", "")
    if support and any(d not in pool for d in demo_ids):
        sup, _ = _load(unit, support)
        pool.update(sup or {})
    demos = {d: _thumb(pool[d], DEMO_PX) if d in pool else "error: demonstration not found in the reloaded data"
             for d in demo_ids}
    return out, demos


def _text(x: Any) -> str:
    t = x if isinstance(x, str) else json.dumps(x, indent=1, ensure_ascii=False, default=str)
    return t if len(t) <= SECTION_CHARS else t[:SECTION_CHARS] + "\n… (truncated; the full trace is in predictions.jsonl)"


def trace_sections(trace: Any) -> list[dict[str, str]]:
    """What the paradigm did for this sample, as labelled texts, from the keys its trace logs.

    Known keys: text conversion (``context``, per-shot contexts, ``prompts``, ``generations``,
    option ``candidates``/``logprobs``), tool agents (``prompt``, ``transcript``), guided decoding
    (``lm_prompt``, ``beams`` with their scores, per-step ``steps``), adapters (``prompt``). Anything
    else is kept in a final "other trace fields" section."""
    if not isinstance(trace, dict) or not trace:
        return []
    out: list[dict[str, str]] = []
    used: set[str] = set()

    def add(label: str, *keys: str, value: Any = None) -> None:
        if value is None:
            present = [k for k in keys if trace.get(k) not in (None, "", [], {})]
            if not present:
                return
            value = trace[present[0]] if len(present) == 1 else {k: trace[k] for k in present}
        used.update(keys)
        out.append({"label": label, "text": _text(value)})

    if trace.get("context") not in (None, ""):
        add("converted text (what the LLM read instead of the image)", "context")
    if isinstance(trace.get("shots"), list) and trace["shots"] and isinstance(trace["shots"][0], dict):
        add("demonstrations as converted text", "shots",
            value="\n".join(f"[{s.get('sample_id', '?')}] {s.get('context', '')} → {s.get('answer', '')}"
                            for s in trace["shots"]))
    add("LLM prompt", "prompts", "prompt", "lm_prompt")
    add("tool calls and observations", "transcript", "scratchpad")
    if trace.get("candidates"):
        lp = trace.get("logprobs") or []
        add("scored candidates (log-probability)", "candidates", "logprobs",
            value="\n".join(f"{c}: {lp[i] if i < len(lp) else '?'}" for i, c in enumerate(trace["candidates"])))
    if trace.get("beams"):
        sims, lms = trace.get("beam_scorer_sims") or [], trace.get("beam_lm_scores") or []
        add("guided-decoding candidates (beam: LM score, image–text similarity)", "beams", "beam_scorer_sims",
            "beam_lm_scores", "chosen_beam",
            value="\n".join(f"{'→ ' if i == trace.get('chosen_beam') else '  '}{b}: LM {lms[i] if i < len(lms) else '?'}, "
                            f"sim {sims[i] if i < len(sims) else '?'}" for i, b in enumerate(trace["beams"])))
    if isinstance(trace.get("steps"), list) and trace["steps"] and isinstance(trace["steps"][0], dict):
        add("guided-decoding steps (token candidates and scores)", "steps")
    add("generations (ensemble members)", "generations", "chosen")
    rest = {k: v for k, v in trace.items() if k not in used}
    if rest:
        out.append({"label": "other trace fields", "text": _text(rest)})
    return out


def _verdict(family: str, raw: float | None, test: Callable[[float], bool]) -> str:
    if raw is None:
        return "unscored"
    if family == "vqa_accuracy" and 0 < raw < 100:
        return "partial"
    return "right" if test(raw) else "wrong"


def _score_text(family: str, metric: str, raw: float | None) -> str:
    if raw is None:
        return "score n/a"
    shown = raw * scale(metric)
    if family == "vqa_accuracy" and 0 < raw < 100:
        return f"partial credit: VQA accuracy {shown:.1f} of 100"
    return f"{metric} {shown:.1f}"


def _answers_label(kind: str) -> str:
    return {"vqa": "Human answers", "binding": "Expected word (procedural episode)",
            "multiple_choice": "Correct answer"}.get(kind, "Accepted answers")


def explorer_data(units: Sequence[UnitRun], limit: int = 200, thumbnails: bool = True) -> dict[str, Any]:
    """JSON-ready explorer content, one entry per data set (first ``limit`` samples of each)."""
    labels, dlabels = setup_labels(units), data_labels(units)
    by_data: dict[str, list[UnitRun]] = defaultdict(list)
    for u in units:
        by_data[dlabels[u.data]].append(u)
    tasks: dict[str, Any] = {}
    for data, us in sorted(by_data.items()):
        family, primary, kind = us[0].metric_family, us[0].primary, us[0].task_kind
        test, words = right_rule(family)
        ids: list[str] = []
        for u in us:
            ids += [r["sample_id"] for r in u.rows if r["sample_id"] not in ids]
        ids = ids[:limit]
        keep = set(ids)
        demo_ids = list(dict.fromkeys(d for u in us for r in u.rows if r["sample_id"] in keep
                                      for d in (r.get("shots") or [])))
        capped = demo_ids[DEMO_THUMBS_MAX:]
        demo_ids = demo_ids[:DEMO_THUMBS_MAX]
        if thumbnails:
            thumbs, demo_thumbs = _thumbnails(us[0], ids, demo_ids)
            demo_thumbs.update({d: f"error: not shown (over {DEMO_THUMBS_MAX} demonstration thumbnails for this data set)"
                                for d in capped})
        else:
            thumbs = {i: "error: thumbnails turned off" for i in ids}
            demo_thumbs = {d: "" for d in demo_ids}
        settings = sorted({(u.shots, u.trial) for u in us})
        samples: dict[str, dict[str, Any]] = {}
        means: dict[tuple[str, str], list[float]] = defaultdict(list)
        for u in us:
            setting = f"{u.shots}-shot · trial {u.trial}"
            col = f"score_{u.primary}"
            label = labels[u.setup]
            for r in u.rows:
                sid = r["sample_id"]
                if sid not in keep:
                    continue
                s = samples.setdefault(sid, {
                    "id": sid, "question": r.get("question", ""), "references": r.get("references", []),
                    "answers": r.get("answers", []), "choices": r.get("choices", []),
                    "thumb": thumbs.get(sid, ""), "by": {}})
                raw = r.get(col)
                raw = float(raw) if isinstance(raw, (int, float)) else None
                if raw is not None:
                    means[(setting, label)].append(raw * scale(u.primary))
                shot_answers = r.get("shot_answers") or []
                s["by"].setdefault(setting, {})[label] = {
                    "prediction": r.get("prediction", ""), "error": r.get("error") or "",
                    "score": None if raw is None else raw * scale(u.primary),
                    "score_text": _score_text(family, u.primary, raw), "verdict": _verdict(family, raw, test),
                    "oracle": u.is_oracle, "prompt": r.get("prompt", ""),
                    "demos": [{"id": d, "answer": shot_answers[i] if i < len(shot_answers) else "",
                               "thumb": demo_thumbs.get(d, "")} for i, d in enumerate(r.get("shots") or [])],
                    "sections": trace_sections(r.get("trace")),
                }
        for s in samples.values():
            s["disagree"] = {
                k: len({_norm(a["prediction"]) for a in v.values()}) > 1 or len({a["verdict"] for a in v.values()}) > 1
                for k, v in s["by"].items()
            }
        oracle_setups = sorted({labels[u.setup] for u in us if u.is_oracle})
        gaps = []
        for setting in [f"{k}-shot · trial {t}" for k, t in settings]:
            for o in oracle_setups:
                for real in sorted({labels[u.setup] for u in us if not u.is_oracle}):
                    a, b = means.get((setting, o)), means.get((setting, real))
                    if a and b:
                        gaps.append({"setting": setting, "oracle": o, "real": real,
                                     "oracle_mean": sum(a) / len(a), "real_mean": sum(b) / len(b),
                                     "gap": sum(a) / len(a) - sum(b) / len(b)})
        tasks[data] = {"kind": kind, "metric": primary, "right": words, "answers_label": _answers_label(kind),
                       "settings": [f"{k}-shot · trial {t}" for k, t in settings],
                       "paradigms": sorted({labels[u.setup] for u in us}), "oracle_gaps": gaps,
                       "samples": [samples[i] for i in ids if i in samples]}
    return {"tasks": tasks,
            "disagree": "setups disagree when their answers differ (lower-cased, punctuation removed) "
                        "or when their verdicts (right / partial / wrong) differ"}
