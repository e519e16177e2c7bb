"""Ordinary mistakes end with a message that names the problem and what to do, exit status 1 and no
traceback: each case below is a real bad input or a real broken resource, run through the CLI."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli import main


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    # A clean failure is click's SystemExit(1); anything else escaped as a traceback.
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exc_info
    return res.exit_code, res.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _world_config(tmp: Path, **over: object) -> Path:
    cfg = {"name": "errors", "limit": 1, "paradigms": [{"name": "text_conversion/pica"}],
           "tasks": [{"name": "world_vqa"}], "results_dir": str(tmp / "r"), **over}
    p = tmp / "cfg.yaml"
    p.write_text(json.dumps(cfg))
    return p


def test_non_utf8_config(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: café\nparadigms: []\n".encode("latin-1"))
    code, out = _cli("run", "--config", str(p))
    assert code == 1 and "not UTF-8" in out and str(p) in out


def test_corrupt_result_cache_says_move_it_aside(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "cache.sqlite").write_bytes(b"this is not a database\n" * 200)
    code, out = _cli("run", "--config", str(_world_config(tmp_path)), "--no-progress")
    assert code == 1 and "is corrupt" in out and "mv " in out and "cache.sqlite.corrupt" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_results_dir_for_run_and_report(tmp_path):
    ro = tmp_path / "r"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out = _cli("run", "--config", str(_world_config(tmp_path)), "--no-progress")
        assert code == 1 and ("not writable" in out or "cannot write" in out or "permission" in out.lower())
        code, out = _cli("report", "--results-dir", str(ro))
        assert code == 1 and "Traceback" not in out
    finally:
        ro.chmod(0o755)


@pytest.mark.slow
def test_report_into_an_unwritable_place_is_a_message(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out = _cli("report", "--results-dir", str(tmp_path / "none"), "--out", str(blocker / "report"))
    assert code == 1 and "Traceback" not in out


def test_report_on_a_store_that_cannot_be_opened(tmp_path):
    (tmp_path / "r" / "mlflow.db").mkdir(parents=True)  # a folder where the SQLite store should be
    code, out = _cli("report", "--results-dir", str(tmp_path / "r"))
    assert code == 1 and "is not a file" in out
    (tmp_path / "r" / "mlflow.db").rmdir()
    (tmp_path / "r" / "mlflow.db").write_bytes(b"garbage, not SQLite" * 10)
    code, out = _cli("report", "--results-dir", str(tmp_path / "r"))
    assert code == 1 and "not an SQLite database" in out and "mv " in out


@pytest.mark.slow
def test_compare_with_unknown_run_ids(tmp_path):
    code, out = _cli("compare", "0123abcd", "4567ef01", "--results-dir", str(tmp_path / "r"))
    assert code == 1 and "no run with id '0123abcd'" in out


def _vqa_files(tmp: Path, answers: object) -> list[str]:
    q = tmp / "q.json"
    a = tmp / "a.json"
    r = tmp / "res.json"
    q.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 1, "question": "what?"}]}))
    a.write_text(json.dumps({"annotations": [{"question_id": 1, "image_id": 1, "answers": answers}]}))
    r.write_text(json.dumps([{"question_id": 1, "answer": "yes"}]))
    return ["score", "vqa", "--questions", str(q), "--annotations", str(a), "--predictions", str(r), "--bootstrap", "0"]


def test_score_vqa_answers_as_plain_strings(tmp_path):
    code, out = _cli(*_vqa_files(tmp_path, ["yes", "yes", "no"]))
    assert code == 1 and "a.json" in out and "answers must be a list of objects" in out


def test_score_annotations_of_the_wrong_shape(tmp_path):
    ann = tmp_path / "captions.json"
    ann.write_text(json.dumps([{"image_id": 1, "caption": "a dog"}]))  # a bare list, not {"annotations": [...]}
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "caption": "a dog"}]))
    code, out = _cli("score", "captioning", "--annotations", str(ann), "--predictions", str(res), "--bootstrap", "0")
    assert code == 1 and "captions.json" in out and "'annotations' list" in out


def test_score_missing_results_names_the_file_and_a_real_option(tmp_path):
    args = _vqa_files(tmp_path, [{"answer": "yes"}] * 10)
    Path(args[args.index("--predictions") + 1]).write_text("[]")
    code, out = _cli(*args)
    assert code == 1 and "res.json" in out and "--missing empty" in out and "missing='empty'" not in out
    code, out = _cli(*args, "--missing", "empty")  # the option the message names exists and works
    assert code == 0, out


def test_score_log_mlflow_with_an_unreachable_server(tmp_path):
    args = _vqa_files(tmp_path, [{"answer": "yes"}] * 10)
    uri = f"http://user:s3cret@127.0.0.1:{_closed_port()}"
    code, out = _cli(*args, "--log-mlflow", "--tracking-uri", uri)
    assert code == 1 and "not logged" in out and "s3cret" not in out


def test_train_with_an_unknown_connector(tmp_path):
    code, out = _cli("train", "--connector", "bogus")
    assert code == 1 and "unknown --connector 'bogus'" in out and "frozen" in out and "--paradigm" not in out


def test_ui_on_a_busy_port_exits_non_zero(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = _cli("ui", "--results-dir", str(tmp_path), "--port", str(port))
    assert code == 1 and "already in use" in out


_FILL = textwrap.dedent("""
    import resource, signal, sys
    from harness.cache import CacheError, ResultCache
    cache = ResultCache(sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a disk with 200 kB left
    try:
        for i in range(10_000):
            cache.put_many("u", [(f"k{i}-{j}", "s", {"text": "x" * 500}) for j in range(20)])
    except CacheError as exc:
        print("CACHE-ERROR", exc)
        sys.exit(3)
""")


def test_disk_full_while_writing_the_cache_says_so(tmp_path):
    db = tmp_path / "cache.sqlite"
    done = subprocess.run([sys.executable, "-c", _FILL, str(db)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr[-2000:]
    # SQLite reports ENOSPC as "disk is full" and a write past the size limit as "disk I/O error":
    # either way the message says what happened, that earlier batches are safe, and what to do.
    assert ("is full" in done.stdout or "disk is full, over a size quota" in done.stdout)
    assert "safe" in done.stdout and "run the same command again" in done.stdout
    assert "no transaction is active" not in done.stdout + done.stderr
    with sqlite3.connect(db) as c:  # what was committed before the disk filled up is intact
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("SELECT COUNT(*) FROM answers").fetchone()[0] > 0
