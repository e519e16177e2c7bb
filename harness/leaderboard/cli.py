"""``mmbench report``: write the leaderboard report from an MLflow store."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.option("--experiment", "experiments", multiple=True, default=("mmbench",), show_default=True,
              help="MLflow experiment to read (repeat for several).")
@click.option("--runs", "runs", multiple=True,
              help="Only these parent runs (`mmbench run` invocations), by run id or run name; repeat or "
                   "separate with commas. Default: every run of the experiment(s).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: <results-dir>/report).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI: sqlite:///… or http://server (default: sqlite under the results dir).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@click.option("--bootstrap", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Resamples of the paired bootstrap CIs of differences (the tests are permutation tests).")
@click.option("--explorer-limit", type=click.IntRange(min=1), default=200, show_default=True,
              help="Samples per task in the HTML per-sample explorer.")
@click.option("--no-thumbnails", is_flag=True, help="Do not reload images for the explorer.")
def report_cmd(experiments: tuple[str, ...], runs: tuple[str, ...], out_dir: Path | None, tracking_uri: str | None, results_dir: Path, bootstrap: int,
               explorer_limit: int, no_thumbnails: bool) -> None:
    """Leaderboard report (HTML, Markdown, CSV) from the runs in an MLflow store."""
    from harness.leaderboard import build_report
    from harness.tracking import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(results_dir)
    out = out_dir or results_dir / "report"
    try:
        chosen = [r.strip() for item in runs for r in item.split(",") if r.strip()]
        files = build_report(uri, list(experiments), out, runs=chosen, n_boot=bootstrap, explorer_limit=explorer_limit,
                             thumbnails=not no_thumbnails)
    except ValueError as exc:
        from harness.tracking import redact_uri

        raise click.ClickException(redact_uri(str(exc))) from None
    from harness.leaderboard.build import public_uri

    click.echo(f"report from {files.n_units} evaluations in {public_uri(uri)}:")
    click.echo(f"  {files.html}\n  {files.markdown}")
    for p in files.csv:
        click.echo(f"  {p}")
