"""The ``mmbench`` command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from harness.config import ConfigError, default_config_path, load_config
from harness.registry import FAMILIES, RegistrationError


def _csv_ints(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 0,4,8; got {value!r}") from None


class _Main(click.Group):
    """Ordinary failures (a full disk, a read-only folder, a corrupt cache, an unreachable store)
    end with a message that says what happened and what to do, and exit 1: no traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from harness.cache import CacheError
        from harness.tracking import TrackingError, redact_uri
        from tasks.spec import TaskSpecError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except (CacheError, TrackingError, ConfigError, RegistrationError, TaskSpecError) as exc:
            raise click.ClickException(redact_uri(str(exc))) from None
        except UnicodeDecodeError as exc:
            raise click.ClickException(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                       f"save it as UTF-8 and run again") from None
        except OSError as exc:
            raise click.ClickException(_os_error_message(exc)) from None
        except Exception as exc:
            # The MLflow store failing (unwritable folder, not a database, server gone) is an
            # ordinary condition, not a bug: say which store and why.
            if type(exc).__module__.split(".")[0] in ("mlflow", "sqlalchemy"):
                raise click.ClickException(
                    f"the MLflow store could not be used: {type(exc).__name__}: {redact_uri(str(exc))[:600]}\n"
                    f"Check --results-dir / --tracking-uri (the folder must be writable)."
                ) from None
            raise


def _os_error_message(exc: OSError) -> str:
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return (f"the disk is full (writing{where}). Everything finished before this point is saved; free "
                f"some space (or choose --results-dir on another disk) and run the same command again.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"permission denied:{where} is not writable ({exc.strerror}). Make it writable, or choose "
                f"another folder (--results-dir, --out).")
    return f"{exc.strerror or exc}:{where}" if exc.strerror else f"{type(exc).__name__}: {exc}"


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress messages.")
def main(verbose: bool) -> None:
    """mmbench: compare four ways of using an LLM on vision-language tasks.

    (A harness, not the OpenCompass "MMBench" benchmark.)
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@main.command()
@click.option("--paradigm", "paradigm", multiple=True, default=("all",), show_default=True,
              help=f"'all', a family ({', '.join(FAMILIES)}) or family/variant (see `mmbench list`). Repeatable.")
@click.option("--task", "task", multiple=True, help="Task name(s) to run (default: the config's tasks). Repeatable.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML suite (default: configs/default.yaml).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Samples per task.")
@click.option("--shots", default=None, help="Comma-separated shot counts, e.g. 0,4,8.")
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials (demonstration draws) per k>0.")
@click.option("--seed", type=int, default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None,
              help="MLflow tracking URI (default: sqlite under the results dir).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--retry-failed", is_flag=True, help="Recompute samples whose cached answer is a failure.")
def run(config_path, paradigm, task, limit, shots, trials, seed, batch_size, results_dir, tracking_uri, no_progress,
        retry_failed) -> None:
    """Evaluate paradigms on tasks; resumes from the result cache."""
    from harness.evaluate import run_evaluation
    from harness.plan import plan_run

    try:
        overrides = {"limit": limit, "seed": seed, "batch_size": batch_size,
                     "results_dir": str(results_dir) if results_dir else None}
        cfg = load_config(config_path or default_config_path(), overrides)
        ic = cfg.in_context.model_dump()
        if shots is not None or trials is not None:
            if shots is not None:
                ic["shots"] = _csv_ints(shots)
            if trials is not None:
                ic["trials"] = trials
            from harness.config import parse_config

            cfg = parse_config({**cfg.model_dump(mode="json"), "in_context": ic})
        plan = plan_run(cfg, list(paradigm), list(task) or None)
    except ConfigError as exc:
        raise click.ClickException(f"configuration error:\n{exc}") from None
    click.echo(f"mmbench run: config hash {cfg.config_hash()}, {len(plan.units())} units "
               f"({len(plan.paradigms)} paradigms × {len(plan.tasks)} tasks)", err=True)
    try:
        outcome = run_evaluation(cfg, tracking_uri=tracking_uri, progress=not no_progress, plan=plan,
                                 retry_failed=retry_failed)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from harness.interface import RetryableFailure
        from harness.tracking import TrackingError

        if isinstance(exc, RetryableFailure):  # e.g. the LLM endpoint went away: resumable, nothing lost
            raise click.ClickException(f"run stopped: {exc}") from None
        if isinstance(exc, TrackingError):
            raise click.ClickException(f"{exc}\nNothing was computed. Check --tracking-uri / tracking.uri "
                                       f"(or start the MLflow server) and run the same command again.") from None
        raise
    if not outcome.table:  # a worker rank of a multi-process run: rank 0 prints the results
        return
    click.echo(outcome.table)
    click.echo(f"\nsamples computed: {outcome.computed}, read from cache: {outcome.cached}; "
               f"models loaded: {', '.join(outcome.loaded) or 'none'}", err=True)
    n_transient = sum(int(r.costs.get("n_transient", 0)) for r in outcome.results)
    if n_transient:
        click.echo(f"{n_transient} sample(s) failed transiently (out of memory, I/O, timeout): scored as wrong "
                   f"in this run, NOT cached; run the same command again to retry them.", err=True)
    t = outcome.timings or {}
    if t.get("model"):
        own = sum(t.get(k, 0.0) for k in ("cache", "logging", "prepare_keys"))
        click.echo(f"time: model {t['model']:.1f} s, harness (cache, keys, logging) {own:.1f} s "
                   f"= {100 * own / t['model']:.1f}% of model time", err=True)
    click.echo(f"\nresults: {outcome.summary_dir}  (MLflow parent run {outcome.parent_run_id})")
    if outcome.tracking_error:
        raise click.ClickException(
            f"MLflow logging failed ({outcome.tracking_error}).\nEvery answer was computed and is in "
            f"{Path(cfg.results_dir) / 'cache.sqlite'}; the local results above are complete, but the "
            f"MLflow store is not. Run the same command again once the tracking store is back: it "
            f"recomputes nothing and logs every unit."
        )


@main.command("list")
def list_cmd() -> None:
    """Paradigms, tasks and models, one line each."""
    from harness.models.llm import PACKAGED_LLMS
    from harness.registry import paradigms
    from tasks.spec import task_specs

    click.echo("paradigms:")
    for name, cls in paradigms().items():
        click.echo(f"  {name:32s} {cls.description}")
    click.echo("tasks:")
    for name, spec in task_specs().items():
        click.echo(f"  {name:32s} [{spec.kind}, {spec.metric}] {spec.description}")
    click.echo("models:")
    for name, (dist, _, f) in PACKAGED_LLMS.items():
        click.echo(f"  llm  packaged:{name:22s} {f} from pip package {dist}")
    click.echo("  llm  hub:<id> | local:<folder>      any transformers causal LM (from_pretrained)")
    click.echo("  scorer tag-minilm                   offline: detector+classifier+OCR tags embedded with MiniLM (not CLIP)")
    click.echo("  scorer open_clip:<arch>:<weights>   real CLIP via open_clip (pip install 'mmbench[clip]')")
    click.echo("  vision_encoder efficientnet-lite0   packaged ImageNet weights; or timm:<name>")
    click.echo("  tools detector (SSD-MobileNet-v2 COCO), classifier (EfficientNet-Lite3), ocr (PP-OCRv4), faces (Haar)")


@main.command()
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def ui(results_dir: Path, tracking_uri: str | None, host: str, port: int) -> None:
    """Start the MLflow UI on the run store and print its address (Ctrl-C stops it and its workers)."""
    from harness.tracking import default_tracking_uri, redact_uri
    from harness.ui_server import experiment_url, port_in_use, serve

    if port_in_use(host, port):
        raise click.ClickException(f"port {port} on {host} is already in use (another MLflow UI?); "
                                   f"pass --port with a free port")
    uri = tracking_uri or default_tracking_uri(results_dir)
    url = experiment_url(uri, f"http://{host}:{port}")
    click.echo(f"MLflow UI for {redact_uri(uri)} at {url}")
    sys.exit(serve(uri, host, port, results_dir / "mlartifacts"))


def _print_metrics(report, as_json: bool) -> None:
    import json

    from harness.report import display_scale

    if as_json:
        out = dict(report.values)
        out["ci"] = {k: list(v) for k, v in report.ci.items()}
        out["unavailable"] = dict(report.unavailable)
        out["info"] = dict(getattr(report, "info", {}) or {})
        click.echo(json.dumps(out, indent=1, sort_keys=True))
        return
    click.echo(f"{'metric':24s} {'value':>10s}   95% CI")
    for k, v in report.values.items():
        s = display_scale(k) if k != "overall" else 1.0
        lo, hi = report.ci.get(k, (float("nan"), float("nan")))
        click.echo(f"{k:24s} {v * s:10.2f}   [{lo * s:.2f}, {hi * s:.2f}]")
    for k, why in report.unavailable.items():
        click.echo(f"{k:24s} {'n/a':>10s}   unavailable: {why}")


@main.group()
def score() -> None:
    """Score predictions made elsewhere with mmbench's metrics."""


@score.command("captioning")
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False), help="COCO caption annotation JSON.")
@click.option("--predictions", required=True, type=click.Path(exists=True, dir_okay=False), help="COCO results JSON: [{image_id, caption}].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (pycocoevalcap metric names).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--log-mlflow", is_flag=True, help="Also log the scores to MLflow as an external run.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None)
@click.option("--missing", type=click.Choice(["error", "empty", "skip"]), default="error", show_default=True,
              help="Images without a result: an error, scored as empty captions, or left out.")
def score_captioning(annotations, predictions, as_json, bootstrap, log_mlflow, tracking_uri, missing) -> None:
    from tasks.metrics.external import score_coco_results

    try:
        report = score_coco_results(annotations, predictions, n_boot=bootstrap, missing=missing)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_metrics(report, as_json)
    if log_mlflow:
        _log_external("captioning", predictions, report, tracking_uri)


@score.command("vqa")
@click.option("--questions", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--predictions", required=True, type=click.Path(exists=True, dir_okay=False), help="Official results JSON: [{question_id, answer}].")
@click.option("--mode", type=click.Choice(["vqaeval", "evalai"]), default="vqaeval", show_default=True,
              help="vqaeval: exactly the official vqaEval.py; evalai: the prediction is always normalised first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object ('overall' in percent).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--log-mlflow", is_flag=True)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None)
@click.option("--missing", type=click.Choice(["error", "empty"]), default="error", show_default=True,
              help="Questions without a result: an error, or counted as failed answers (0).")
def score_vqa_cmd(questions, annotations, predictions, mode, as_json, bootstrap, log_mlflow, tracking_uri, missing) -> None:
    from tasks.metrics.external import score_vqa_results

    try:
        report = score_vqa_results(questions, annotations, predictions, mode=mode, n_boot=bootstrap, missing=missing)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"VQA accuracy mode: {mode}", err=True)
    _print_metrics(report, as_json)
    if log_mlflow:
        _log_external("vqa", predictions, report, tracking_uri)


def _log_external(kind: str, predictions: str, report, tracking_uri: str | None) -> None:
    from harness.tracking import Tracker, TrackingError, default_tracking_uri

    results_dir = Path("results")
    try:
        tracker = Tracker(tracking_uri or default_tracking_uri(results_dir), "mmbench", results_dir / "mlartifacts")
    except TrackingError as exc:
        raise click.ClickException(f"the scores above were computed but not logged: {exc}") from None
    run = tracker.start_parent(f"external-{kind}-{Path(predictions).stem}", {"predictions": str(predictions), "kind": kind},
                               {"mmbench.kind": "external", "mmbench.paradigm": f"external:{Path(predictions).stem}"})
    metrics = dict(report.values)
    for k, (lo, hi) in report.ci.items():
        metrics[f"{k}_ci_low"], metrics[f"{k}_ci_high"] = lo, hi
    tracker.log_metrics(run, metrics)
    tracker.end(run)
    click.echo(f"logged to MLflow run {run}", err=True)


@main.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--metric", default=None, help="Per-sample metric to compare (default: the runs' primary metric).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None)
@click.option("--bootstrap", type=click.IntRange(min=100), default=10000, show_default=True)
def compare(run_a: str, run_b: str, metric: str | None, results_dir: Path, tracking_uri: str | None, bootstrap: int) -> None:
    """Paired test between two nested runs (MLflow run ids) on the same samples, as in the report."""
    from harness.compare import compare_runs, format_comparison
    from harness.tracking import default_tracking_uri

    try:
        res, name, labels = compare_runs(tracking_uri or default_tracking_uri(results_dir), run_a, run_b, metric, bootstrap)
    except ValueError as exc:
        from harness.tracking import redact_uri

        raise click.ClickException(redact_uri(str(exc))) from None
    click.echo(format_comparison(res, name, labels))


@main.command()
@click.option("--paradigm", default="trained_adapter", show_default=True, type=click.Choice(["trained_adapter"]))
@click.option("--connector", required=True, help="Connector variant: frozen, flamingo, blip2, palme.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Suite whose models and trained_adapter options are used (default: configs/default.yaml).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override train.steps.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", default=None)
def train(paradigm: str, connector: str, config_path: Path | None, steps: int | None, results_dir: Path | None,
          tracking_uri: str | None) -> None:
    """Train a visual connector on a frozen LLM (cached by config hash; `mmbench run` reuses it)."""
    from harness.registry import paradigms
    from harness.training_run import TrainingError, run_training

    connectors = sorted(n.split("/", 1)[1] for n in paradigms() if n.startswith(f"{paradigm}/"))
    if connector not in connectors:
        raise click.ClickException(f"unknown --connector {connector!r}; choices: {', '.join(connectors)}")
    try:
        cfg = load_config(config_path or default_config_path(),
                          {"results_dir": str(results_dir) if results_dir else None})
        out = run_training(cfg, f"{paradigm}/{connector}", steps=steps, tracking_uri=tracking_uri)
    except (ConfigError, TrainingError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(out)


@main.group("cache")
def cache_group() -> None:
    """Inspect or clear the result cache (answers are keyed by content; clearing is rarely needed)."""


def _open_cache(results_dir: Path):
    from harness.cache import CacheError, ResultCache

    path = results_dir / "cache.sqlite"
    if not path.is_file():
        raise click.ClickException(f"no result cache at {path}")
    try:
        return ResultCache(path)
    except CacheError as exc:
        raise click.ClickException(str(exc)) from None


@cache_group.command("info")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@click.option("--paradigm", default=None, help="Only units of this paradigm label (or family).")
@click.option("--task", default=None, help="Only units of this task.")
def cache_info(results_dir: Path, paradigm: str | None, task: str | None) -> None:
    """Answers and failures per unit (paradigm | task | shots | trial)."""
    from harness.cache import unit_matches

    with _open_cache(results_dir) as cache:
        rows = [r for r in cache.unit_summary() if unit_matches(r[0], paradigm, task)]
        size = cache.path.stat().st_size
        memos = cache.memo_count()
    click.echo(f"{cache.path}: {size / 2**20:.1f} MiB, {memos} memoised metrics/shot selections")
    click.echo(f"{'answers':>8s} {'failed':>7s}  unit")
    for unit, n, failed in rows:
        click.echo(f"{n:8d} {failed:7d}  {unit}")
    click.echo(f"{sum(r[1] for r in rows):8d} {sum(r[2] for r in rows):7d}  total")


@cache_group.command("clear")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
@click.option("--paradigm", default=None, help="Only units of this paradigm label (or family).")
@click.option("--task", default=None, help="Only units of this task.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(results_dir: Path, paradigm: str | None, task: str | None, yes: bool) -> None:
    """Delete cached answers (all, or those of --paradigm/--task); the next run recomputes them."""
    what = " and ".join(x for x in (paradigm and f"paradigm {paradigm!r}", task and f"task {task!r}") if x) or "every unit"
    if not yes:
        click.confirm(f"delete the cached answers of {what}?", abort=True)
    with _open_cache(results_dir) as cache:
        n = cache.clear(paradigm, task)
    click.echo(f"deleted {n} cached answers ({what})")


def _register_report() -> None:
    from harness.leaderboard.cli import report_cmd

    main.add_command(report_cmd)


_register_report()

if __name__ == "__main__":  # pragma: no cover
    main()
