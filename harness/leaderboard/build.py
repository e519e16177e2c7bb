"""Build the report files (report.html, report.md, CSV tables, PNG figures) from an MLflow store."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.leaderboard import plots, tables
from harness.leaderboard.collect import Store, load_store
from harness.leaderboard.explorer import RIGHT_RULES, explorer_data
from harness.leaderboard.render_html import render_html
from harness.leaderboard.render_md import render_markdown
from harness.leaderboard.sections import Table, frame_table, leaderboard_tables, published_table, repro_tables
from harness.published import PUBLISHED


@dataclass
class ReportFiles:
    """What ``build_report`` wrote."""

    html: Path
    markdown: Path
    csv: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    n_units: int = 0


def _intro(store: Store) -> str:
    return (f"Measured by mmbench from the MLflow store {store.uri} (experiment {store.experiment!r}): "
            f"{len(store.units)} evaluations (paradigm × task × shots × trial) from {len(store.parents)} run(s); "
            f"{store.superseded} older duplicate evaluation(s) superseded by later runs. Generated "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Caption metrics ×100; accuracies in percent.")


def build_report(uri: str, experiment: str, out: Path, *, n_boot: int = 2000, explorer_limit: int = 200,
                 thumbnails: bool = True) -> ReportFiles:
    """Read the store and write every report file under ``out``."""
    store = load_store(uri, experiment)
    if not store.units:
        raise ValueError(f"no finished mmbench evaluations in experiment {experiment!r} of {uri}")
    out.mkdir(parents=True, exist_ok=True)
    lb, fs, cost, fail = (tables.leaderboard(store.units, n_boot), tables.fewshot(store.units),
                          tables.cost(store.units), tables.failures(store.units))
    files = ReportFiles(out / "report.html", out / "report.md", n_units=len(store.units))
    import pandas as pd

    published = pd.DataFrame([p.as_dict() for p in PUBLISHED])
    for name, frame in (("leaderboard", lb), ("fewshot", fs), ("cost", cost), ("failures", fail), ("published", published)):
        path = out / f"{name}.csv"
        frame.to_csv(path, index=False)
        files.csv.append(path)

    html_sections: list = []
    md_sections: list = []
    present = [f for f in tables.FAMILIES if f in set(lb["task_kind"])] + \
              sorted(set(lb["task_kind"]) - set(tables.FAMILIES))
    for fam in present:
        tbs: list[Table] = leaderboard_tables(lb, fam)
        pub = published_table(fam)
        html_sections.append((f"lb-{fam}", f"Leaderboard: {fam}", tbs + ([pub] if pub else []), []))
        md_sections.append((f"Leaderboard: {fam}", tbs + ([pub] if pub else []), []))

    fs_figs, md_fs = [], []
    for task in sorted(set(fs["task"])):
        png = plots.fewshot_png(fs, task)
        path = out / f"fewshot_{task}.png"
        path.write_bytes(png)
        files.figures.append(path)
        fs_figs.append((png, f"few-shot curve {task}"))
        md_fs.append((path.name, f"few-shot curve {task}"))
    fs_note = "Primary metric vs number of in-context examples; mean over trials, band = 95% bootstrap CI."
    fs_table = frame_table("Few-shot values", fs, ["task", "paradigm", "shots", "metric", "value", "ci_low", "ci_high", "n_trials"], fs_note)
    html_sections.append(("fewshot", "Few-shot curves", [fs_table], fs_figs))
    md_sections.append(("Few-shot curves", [fs_table], md_fs))

    cost_figs, md_cost = [], []
    for task in sorted(set(cost["task"])):
        png = plots.cost_png(cost, task)
        path = out / f"cost_{task}.png"
        path.write_bytes(png)
        files.figures.append(path)
        cost_figs.append((png, f"quality vs cost {task}"))
        md_cost.append((path.name, f"quality vs cost {task}"))
    cost_table = frame_table("Quality and cost per sample", cost,
                             ["task", "paradigm", "shots", "metric", "value", "seconds_per_sample",
                              "llm_tokens_per_sample", "tool_calls_per_sample", "trainable_params"],
                             "Costs are means per sample over the evaluated samples (cached answers keep the latency "
                             "measured when they were computed).")
    html_sections.append(("cost", "Quality versus cost", [cost_table], cost_figs))
    md_sections.append(("Quality versus cost", [cost_table], md_cost))

    fail_png = plots.failures_png(fail)
    (out / "failures.png").write_bytes(fail_png)
    files.figures.append(out / "failures.png")
    fail_table = frame_table("Failures per paradigm", fail, list(fail.columns),
                             "n_failed: samples with no answer (error; scored as wrong); parse_errors: outputs not in "
                             "the expected format; tool_failures: tool calls that raised; budget_exhausted: agent "
                             "loops stopped by the step budget. Sums over all tasks, shots and trials.")
    html_sections.append(("failures", "Failures", [fail_table], [(fail_png, "failure counts")]))
    md_sections.append(("Failures", [fail_table], [("failures.png", "failure counts")]))

    rules = Table("What counts as right in the explorer", ["metric family", "right when"],
                  [[k, v[1]] for k, v in RIGHT_RULES.items()])
    repro = repro_tables(store.parents)
    html_sections.append(("repro", "Reproducibility", repro + [rules], []))
    md_sections.append(("Reproducibility", repro, []))

    title = "mmbench leaderboard report"
    intro = _intro(store)
    files.markdown.write_text(render_markdown(title, intro, md_sections), encoding="utf-8")
    explorer = explorer_data(store.units, explorer_limit, thumbnails)
    files.html.write_text(render_html(title, intro, html_sections, explorer), encoding="utf-8")
    return files
