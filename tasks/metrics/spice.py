"""SPICE through pycocoevalcap's jar — only when its Stanford CoreNLP jars are already installed.

pycocoevalcap's ``Spice()`` constructor downloads CoreNLP 3.6.0 from nlp.stanford.edu when the jars
are missing, which hangs or fails offline. So presence is checked on disk first and the downloader
is never called; when anything is missing SPICE is reported as unavailable with the reason (never
as 0). Users can install the jars once with
``python -c "from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from pycocoevalcap.spice import get_stanford_models as _models
from pycocoevalcap.spice import spice as _spice

from tasks.metrics.tokenize import find_java, java_unavailable_reason

SPICE_DIR = Path(_spice.__file__).resolve().parent
SPICE_JAR_NAME = _spice.SPICE_JAR
CORENLP_JARS = (f"{_models.JAR}.jar", f"{_models.JAR}-models.jar")


def spice_unavailable_reason(spice_dir: Path = SPICE_DIR) -> str | None:
    """Why SPICE cannot run here, or None when it can (checks files only; never downloads)."""
    java_reason = java_unavailable_reason()
    if java_reason:
        return f"SPICE needs Java: {java_reason}"
    if not (spice_dir / SPICE_JAR_NAME).is_file():
        return f"{spice_dir / SPICE_JAR_NAME} is missing"
    missing = [j for j in CORENLP_JARS if not (spice_dir / _models.SPICELIB / j).is_file()]
    if missing:
        return (f"Stanford CoreNLP jars {', '.join(missing)} are not in {spice_dir / _models.SPICELIB} "
                "(pycocoevalcap downloads them on first use, which needs internet; see docs/metrics.md)")
    return None


def spice_java(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float, list[float]]:
    """Corpus SPICE (mean of per-image F-scores, as pycocoevalcap) and per-image scores.

    Same command as pycocoevalcap (``-subset -silent``, 8 GB heap) but with the input/output files
    in a private temporary folder rather than inside the installed package, and without the
    LMDB parse cache (the cache only saves time; scores are unchanged).
    """
    java = find_java()
    if java is None:
        raise RuntimeError(java_unavailable_reason())
    data = [{"image_id": i, "test": h, "refs": list(r)} for i, (h, r) in enumerate(zip(hyps, refs, strict=True))]
    with tempfile.TemporaryDirectory(prefix="mmbench-spice-") as tmp:
        in_file, out_file = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(in_file, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        cmd = [java, "-jar", "-Xmx8G", SPICE_JAR_NAME, in_file, "-out", out_file, "-subset", "-silent"]
        proc = subprocess.run(cmd, cwd=SPICE_DIR, capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"SPICE failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
        with open(out_file, encoding="utf-8") as fh:
            results = json.load(fh)
    by_id = {item["image_id"]: item["scores"]["All"]["f"] for item in results}
    per = []
    for i in range(len(data)):
        try:
            per.append(float(by_id[i]))
        except (TypeError, ValueError):
            per.append(float("nan"))
    return float(np.mean(per)), per
