"""No code-execution hazards anywhere in the repository's Python (product, scripts, benchmarks,
tests): eval/exec, pickle-family loading, unsafe torch.load / yaml.load, shells, hard-coded
trust_remote_code. The scan resolves import aliases, and the second test proves it catches each."""

from __future__ import annotations

import pytest
from pathlib import Path

from harness.config import repo_root
from tests.source_scan import scan

ROOT = repo_root()
#: (file, hazard) pairs that are there on purpose
ALLOWED = {("tests/test_vlm_pretrained.py", "trust_remote_code=True hard-coded")}  # tests the option's warning


def _sources() -> list[Path]:
    skip = {".venv", ".git", "results", "node_modules"}
    return sorted(p for p in ROOT.rglob("*.py") if not (set(p.relative_to(ROOT).parts) & skip))


@pytest.mark.slow
def test_all_python_in_the_repository_is_free_of_code_execution_hazards():
    paths = _sources()
    dirs = {p.relative_to(ROOT).parts[0] for p in paths}
    assert {"harness", "paradigms", "tasks", "scripts", "benchmarks", "tests"} <= dirs or {"harness", "benchmarks"} <= dirs
    problems = [p for p in scan(paths, ROOT) if (p.split(":")[0], p.split(": ", 1)[1]) not in ALLOWED]
    assert not problems, "\n".join(problems)


PROBE = """\
import torch as T
from torch import load as L
import builtins
import yaml
import pandas as pd
import os
import subprocess
import numpy as np
x = T.load('w.pt')
y = L('w.pt')
ok = T.load('w.pt', weights_only=True)
builtins.eval('1')
yaml.load(s, Loader=yaml.Loader)
yaml.load(s, Loader=yaml.SafeLoader)
pd.read_pickle('f.pkl')
os.system('ls')
subprocess.run('ls', shell=True)
np.load('a.npy', allow_pickle=True)
getattr(builtins, 'exec')('1')
eval('2')
__import__(name)
f(trust_remote_code=True)
import joblib
from cloudpickle import loads
"""


def test_source_scan_catches_each_hazard_through_aliases(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    found = "\n".join(scan([probe], tmp_path))
    expected = {
        9: "torch.load without", 10: "torch.load without", 12: "builtins.eval", 13: "Loader=Loader",
        15: "pandas.read_pickle", 16: "os.system", 17: "shell=True", 18: "allow_pickle", 19: "getattr -> builtins.exec",
        20: "builtins.eval", 21: "builtins.__import__", 22: "trust_remote_code", 23: "joblib", 24: "cloudpickle",
    }
    for line, what in expected.items():
        assert any(f"probe.py:{line}: " in f and what in f for f in found.splitlines()), (line, what, found)
    for line in (11, 14):  # the safe forms are not flagged
        assert f"probe.py:{line}:" not in found, found
