"""Build the report files (report.html, report.md, CSV tables, PNG figures) from an MLflow store."""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.leaderboard import plots, tables
from harness.leaderboard.collect import Store, load_store
from harness.leaderboard.explorer import RIGHT_RULES, explorer_data
from harness.leaderboard.render_html import render_html
from harness.leaderboard.render_md import render_markdown
from harness.leaderboard.sections import (Table, frame_table, icl_table, leaderboard_tables, published_table,
                                          repro_tables, scaling_table)
from harness.leaderboard.stats import rule_text
from harness.published import PUBLISHED


@dataclass
class ReportFiles:
    """What ``build_report`` wrote."""

    html: Path
    markdown: Path
    csv: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    n_units: int = 0


def safe_name(text: str) -> str:
    """A file-name part from a store string: ``[A-Za-z0-9_.-]`` only, plus a digest so two names never
    collide after cleaning, and no path separator or leading dot ever reaches the file system."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "x"
    return f"{clean}-{hashlib.sha256(text.encode()).hexdigest()[:6]}"


def public_uri(uri: str) -> str:
    """The tracking URI without credentials (``https://user:token@host`` → ``https://***@host``)."""
    from harness.tracking import redact_uri

    return redact_uri(uri)


def _intro(store: Store) -> str:
    return (f"Measured by mmbench from the MLflow store {public_uri(store.uri)} (experiment(s) {store.experiment}, "
            f"{store.selection}): {len(store.units)} evaluations (setup × data × shots × trial) from "
            f"{len(store.parents)} run(s); {store.superseded} older evaluation(s) of exactly the same setup, data, "
            f"shots and trial superseded by later runs. A setup is a paradigm with its backbones (LLM, scorer, "
            f"experts, encoder); rows differing in any of them are shown side by side. Generated "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Caption metrics ×100; accuracies in percent.")


class _Out:
    """Collects the HTML and Markdown sections and the files written next to them."""

    def __init__(self, out: Path, files: ReportFiles) -> None:
        self.out, self.files = out, files
        self.html: list = []
        self.md: list = []

    def figure(self, prefix: str, key: str, png: bytes, caption: str) -> tuple[bytes, str, str]:
        """Write ``<prefix>_<safe key>.png``; returns (png, caption, file name)."""
        path = self.out / f"{prefix}_{safe_name(key)}.png"
        path.write_bytes(png)
        self.files.figures.append(path)
        return png, caption, path.name

    def section(self, heading: str, tbls: Sequence[Table], figs: Sequence[tuple[bytes, str, str]]) -> None:
        self.html.append(("", heading, list(tbls), [(png, cap) for png, cap, _ in figs]))
        self.md.append((heading, list(tbls), [(name, cap) for _, cap, name in figs]))


def build_report(uri: str, experiment: str | Sequence[str], out: Path, *, runs: Sequence[str] = (), n_boot: int = 2000,
                 explorer_limit: int = 200, thumbnails: bool = True) -> ReportFiles:
    """Read the store and write every report file under ``out``."""
    store = load_store(uri, experiment, runs=runs)
    if not store.units:
        raise ValueError(f"no finished mmbench evaluations in experiment(s) {store.experiment!r} "
                         f"({store.selection}) of {public_uri(uri)}")
    out.mkdir(parents=True, exist_ok=True)
    units = store.units
    lb, fs, cost, fail = (tables.leaderboard(units, n_boot), tables.fewshot(units), tables.cost(units),
                          tables.failures(units))
    icl = tables.icl_gain(units, n_boot)
    axis = tables.scaling_axis(units)
    sc = tables.scaling(units, axis) if axis else None
    files = ReportFiles(out / "report.html", out / "report.md", n_units=len(units))
    import pandas as pd

    published = pd.DataFrame([p.as_dict() for p in PUBLISHED])
    frames = [("leaderboard", lb), ("fewshot", fs), ("icl_gain", icl), ("cost", cost), ("failures", fail),
              ("published", published)] + ([("scaling", sc)] if sc is not None else [])
    for name, frame in frames:
        path = out / f"{name}.csv"
        frame.to_csv(path, index=False)
        files.csv.append(path)

    o = _Out(out, files)
    rule = rule_text(tables.n_tests(lb))
    kinds = set(lb["task_kind"])
    present = [k for k in tables.TASK_KIND_ORDER if k in kinds] + sorted(kinds - set(tables.TASK_KIND_ORDER))
    for fam in present:
        tbs: list[Table] = leaderboard_tables(lb, fam, rule)
        pub = published_table(fam)
        o.section(f"Leaderboard: {fam}", tbs + ([pub] if pub else []), [])

    if sc is not None and not sc.empty:
        figs, tbs = [], []
        for (data, shots), _ in sc.groupby(["data", "shots"], sort=True):
            tbs.append(scaling_table(sc, data, int(shots)))
            figs.append(o.figure("scaling", f"{data}_{shots}", plots.scaling_png(sc, data, int(shots)),
                                 f"scaling {data} {shots}-shot"))
        o.section(f"Scaling: paradigms across {axis}", tbs, figs)

    if not icl.empty:
        o.section("In-context learning: does each paradigm learn from demonstrations?",
                  [icl_table(icl, rule_text(tables.n_tests(icl)))], [])

    curves = tables.fewshot_tasks(fs)
    fs_figs = [o.figure("fewshot", d, plots.fewshot_png(fs, d), f"few-shot curve {d}") for d in curves]
    single = sorted(set(fs["data"]) - set(curves)) if not fs.empty else []
    fs_note = ("Primary metric vs number of in-context examples, mean over trials (trial_sd: spread across "
               "demonstration draws). Curves are drawn only where a data set has at least two shot counts"
               + (f"; single shot count (no curve): {', '.join(single)}" if single else "") + ".")
    fs_table = frame_table("Few-shot values", fs, ["data", "setup", "shots", "metric", "value", "ci_low", "ci_high",
                                                   "n_trials", "trial_sd"], fs_note, digits=2)
    o.section("Few-shot curves", [fs_table], fs_figs)

    cost_figs = [o.figure("cost", d, plots.cost_png(cost, d), f"quality vs cost {d}") for d in sorted(set(cost["data"]))]
    money = "money_per_sample" in cost.columns
    cost_table = frame_table("Quality and cost per sample", cost,
                             ["data", "setup", "shots", "metric", "value", "seconds_per_sample", "llm_tokens_per_sample",
                              "tool_calls_per_sample", "trainable_params"] + (["money_per_sample"] if money else []),
                             "Costs are means per sample over the evaluated samples (cached answers keep the latency "
                             "measured when they were computed)."
                             + (" money_per_sample: the price-based cost the runs logged per sample (currency of the "
                                "configured price table)." if money else " No money column: no run logged a "
                                                                           "price-based cost (configure a price table)."))
    o.section("Quality versus cost", [cost_table], cost_figs)

    fail_fig = o.figure("failures", "all", plots.failures_png(fail), "failure counts")
    fail_table = frame_table("Failures per setup", fail, list(fail.columns),
                             "n_failed: samples with no answer (error; scored as wrong); parse_errors: outputs not in "
                             "the expected format; tool_failures: tool calls that raised; budget_exhausted: agent "
                             "loops stopped by the step budget. Sums over all tasks, shots and trials.")
    o.section("Failures", [fail_table], [fail_fig])

    rules = Table("What counts as right in the explorer", ["metric family", "right when"],
                  [[k, v[1]] for k, v in RIGHT_RULES.items()])
    repro = repro_tables(store.parents)
    o.html.append(("", "Reproducibility", repro + [rules], []))
    o.md.append(("Reproducibility", repro, []))

    title = "mmbench leaderboard report"
    intro = _intro(store)
    files.markdown.write_text(render_markdown(title, intro, o.md), encoding="utf-8")
    explorer = explorer_data(units, explorer_limit, thumbnails)
    files.html.write_text(render_html(title, intro, o.html, explorer), encoding="utf-8")
    return files
