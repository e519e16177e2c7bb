"""Config validation stops bad runs before any compute, naming the key and the valid choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import ConfigError, RunConfig, load_config, parse_config

BASE = {
    "paradigms": [{"name": "text_conversion/pica"}],
    "tasks": [{"name": "world_vqa"}],
}


def test_unknown_top_level_key_names_it_and_valid_keys():
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "paradigmz": []})
    msg = str(e.value)
    assert "paradigmz" in msg and "paradigms" in msg and "valid keys" in msg


def test_unknown_nested_key_names_path():
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "generation": {"max_tokens": 5}})
    assert "generation.max_tokens" in str(e.value)
    assert "max_new_tokens" in str(e.value)


def test_bad_type_and_nan_and_negative():
    with pytest.raises(ConfigError, match="batch_size"):
        parse_config({**BASE, "batch_size": "eight"})
    with pytest.raises(ConfigError, match="temperature"):
        parse_config({**BASE, "generation": {"temperature": float("nan")}})
    with pytest.raises(ConfigError, match="shots"):
        parse_config({**BASE, "in_context": {"shots": [0, -2]}})
    with pytest.raises(ConfigError, match="limit"):
        parse_config({**BASE, "limit": -1})


def test_hash_is_stable_and_ignores_output_locations():
    a = parse_config(BASE)
    b = parse_config({**BASE, "results_dir": "elsewhere", "batch_size": 3, "tracking": {"experiment": "x"}})
    c = parse_config({**BASE, "seed": 1})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()
    assert len(a.config_hash()) == 16


def test_default_config_is_valid():
    from harness.config import default_config_path

    cfg = load_config(default_config_path())
    assert isinstance(cfg, RunConfig)
    assert cfg.paradigms and cfg.tasks


def _cli(tmp_path: Path, cfg: dict) -> subprocess.CompletedProcess:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--config", str(p), "--results-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.slow
def test_cli_typo_in_key_exits_nonzero_before_loading_models(tmp_path):
    r = _cli(tmp_path, {**BASE, "genration": {}})
    assert r.returncode != 0
    assert "genration" in r.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.slow
def test_cli_typo_in_paradigm_lists_choices(tmp_path):
    r = _cli(tmp_path, {**BASE, "paradigms": [{"name": "text_conversion/pika"}]})
    assert r.returncode != 0
    assert "pika" in r.stderr and "text_conversion/pica" in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_unknown_paradigm_option_names_valid_options(tmp_path):
    r = _cli(tmp_path, {**BASE, "paradigms": [{"name": "text_conversion/pica", "options": {"n_ensembel": 2}}]})
    assert r.returncode != 0
    assert "paradigms[0].options.n_ensembel" in r.stderr


@pytest.mark.slow
def test_cli_unknown_task_lists_choices(tmp_path):
    r = _cli(tmp_path, {**BASE, "tasks": [{"name": "mmbench"}]})
    assert r.returncode != 0
    assert "unknown task 'mmbench'" in r.stderr and "world_vqa" in r.stderr
