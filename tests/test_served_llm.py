"""The served-LLM backend against a real OpenAI-compatible server: ``transformers serve`` run as a
subprocess on 127.0.0.1, serving the packaged SmolLM2 converted to safetensors.

* answers through the server equal the in-process answers (both tool agents, both text-conversion
  variants, on the embedded photos and on ScienceQA in its hub format), and the API key never lands
  in the cache, MLflow or the results;
* the server SIGKILLed mid-run: the run stops with a clear message, a rerun against a restarted
  server resumes and completes, no answer lost or duplicated;
* a fault proxy in front of the server (429 with Retry-After, 500, a response slower than the
  timeout, a dropped connection): the client retries and the answers equal the clean run's; a 400
  is not retried;
* guided decoding and trained adapters with a served LLM exit non-zero before compute.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.models.serve_local import LocalServer, free_port, start_transformers_serve
from tests.cli_runs import cached_answers

KEY_ENV = "MMBENCH_TEST_SERVED_KEY"
KEY = "sk-mmbench-NEVER-LOGGED-5f1c9e"
PHOTO_LIMIT = 1  # samples per task: kept small, two full runs of four paradigms on 2 CPU cores
PAID = {"input_per_mtok": 0.5, "output_per_mtok": 1.5}


@pytest.fixture(scope="session")
def server(smollm2_dir, tmp_path_factory) -> LocalServer:
    srv = start_transformers_serve(smollm2_dir, tmp_path_factory.mktemp("serve") / "serve.log")
    yield srv
    srv.stop()


def _served_llm(base_url: str, model: str, smollm2_dir: Path, **over: Any) -> dict[str, Any]:
    cfg = {
        "source": "openai", "base_url": base_url, "model": model, "api": "completions", "api_key_env": KEY_ENV,
        "max_concurrency": 4, "timeout_s": 60, "max_retries": 2, "price": PAID,
        # The local copy: the chat template and token counts, and log-probs (transformers serve returns none).
        "tokenizer": {"source": "local", "name": str(smollm2_dir), "dtype": "float32", "device": "cpu"},
        "logprobs": "local",
    }
    return {**cfg, **over}


def _scienceqa_parquet(tmp: Path) -> Path:
    """Two ScienceQA test rows in the hub schema, with real photos as their images."""
    import datasets
    from skimage import data as skdata
    from PIL import Image

    cols = {
        "image": [Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())],
        "question": ["Which animal is shown?", "Which drink is shown?"],
        "choices": [["cat", "fish"], ["coffee", "milk", "juice"]], "answer": [0, 0],
        "hint": ["", ""], "task": ["closed choice"] * 2, "grade": ["grade2"] * 2, "subject": ["natural science"] * 2,
        "topic": ["biology"] * 2, "category": ["x"] * 2, "skill": ["s"] * 2, "lecture": [""] * 2, "solution": [""] * 2,
    }
    feats = datasets.Dataset.from_dict({k: v for k, v in cols.items() if k != "image"}).features
    feats["image"] = datasets.Image()
    path = tmp / "scienceqa.parquet"
    datasets.Dataset.from_dict(cols, features=feats).to_parquet(str(path))
    return path


def _suite(tmp: Path, llm: dict[str, Any], sqa: Path, paradigms: list[dict] | None = None, **over: Any) -> dict:
    tools = {"converters": [{"kind": "objects"}, {"kind": "tags"}]}  # OCR left out only for speed
    return {
        "name": "served", "seed": 0, "bootstrap": 0, "clipscore": False, "batch_size": 4,
        "paradigms": paradigms or [
            {"name": "tool_agent/visual_chatgpt", "options": {"max_steps": 1}},
            {"name": "tool_agent/mm_react", "options": {"max_steps": 1}},
            {"name": "text_conversion/pica", "options": tools},
            {"name": "text_conversion/promptcap", "options": tools},
        ],
        "tasks": [
            {"name": "photos_vqa", "limit": PHOTO_LIMIT},
            {"name": "scienceqa_img", "limit": PHOTO_LIMIT,
             "dataset_options": {"data_files": str(sqa), "cache_dir": str(tmp / "hf")}},
        ],
        "models": {"llm": llm},
        "generation": {"max_new_tokens": 8},
        **over,
    }


def _predictions(outcome) -> dict[tuple[str, str], str]:
    return {(r.unit.name, row["sample_id"]): (row["prediction"], row["error"]) for r in outcome.results for row in r.rows}


@pytest.fixture(scope="module")
def runs(server, smollm2_dir, tmp_path_factory):
    """The same suite with the in-process LLM and through the server (with a key in the environment)."""
    from harness.config import parse_config
    from harness.evaluate import run_evaluation

    tmp = tmp_path_factory.mktemp("served_runs")
    sqa = _scienceqa_parquet(tmp)
    local = {"source": "local", "name": str(smollm2_dir), "dtype": "float32", "device": "cpu", "engine": "hf"}
    inproc = run_evaluation(parse_config({**_suite(tmp, local, sqa), "results_dir": str(tmp / "inproc")}), progress=False)
    os.environ[KEY_ENV] = KEY
    try:
        served_cfg = parse_config({**_suite(tmp, _served_llm(server.base_url, server.model, smollm2_dir), sqa),
                                   "results_dir": str(tmp / "served")})
        served = run_evaluation(served_cfg, progress=False)
    finally:
        del os.environ[KEY_ENV]
    return {"tmp": tmp, "sqa": sqa, "inproc": inproc, "served": served, "served_cfg": served_cfg}


@pytest.mark.slow
def test_served_answers_equal_in_process_for_agents_text_conversion_and_scienceqa(runs):
    inproc, served = _predictions(runs["inproc"]), _predictions(runs["served"])
    units = {u for u, _ in served}
    assert len(units) == 8  # 4 paradigms x (photos_vqa, scienceqa_img)
    assert set(served) == set(inproc) and len(served) == 4 * 2 * PHOTO_LIMIT
    assert not [k for k, (_, err) in served.items() if err], served
    assert served == inproc
    # Token counts come from the server's usage and match the local count; money from the price table.
    for r_in, r_sv in zip(runs["inproc"].results, runs["served"].results):
        for a, b in zip(r_in.rows, r_sv.rows):
            assert b["llm_tokens_in"] == a["llm_tokens_in"] and b["llm_tokens_out"] == a["llm_tokens_out"]
            want = (b["llm_tokens_in"] * PAID["input_per_mtok"] + b["llm_tokens_out"] * PAID["output_per_mtok"]) / 1e6
            assert b["llm_cost"] == pytest.approx(want)
        assert r_sv.costs["llm_cost_mean"] > 0 and "llm_cost" not in r_in.rows[0]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs['tmp'] / 'served' / 'mlflow.db'}")
    parent = client.get_run(runs["served"].parent_run_id).data.metrics
    assert parent["served_calls"] >= len(served) and parent["served_retries"] == 0  # >= 1 call per sample


@pytest.mark.slow
def test_api_key_never_written(runs):
    root = runs["tmp"] / "served"
    assert (root / "cache.sqlite").exists() and (root / "mlflow.db").exists()
    hits = [p for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert hits == []
    # the environment variable's name is recorded (which key was used), never its value
    (cfg_yaml,) = list(root.rglob("config.yaml"))
    assert KEY_ENV in cfg_yaml.read_text()


# --------------------------------------------------------------------------- killed server
@pytest.mark.slow
def test_server_killed_mid_run_stops_clearly_and_rerun_resumes(runs, smollm2_dir, tmp_path):
    tmp = runs["tmp"]
    own = start_transformers_serve(smollm2_dir, tmp_path / "serve.log")
    results = tmp_path / "res"

    def config(srv: LocalServer) -> Path:
        llm = _served_llm(srv.base_url, srv.model, smollm2_dir, max_retries=2, timeout_s=20)
        suite = _suite(tmp, llm, runs["sqa"], [{"name": "text_conversion/pica", "options": {"converters": [{"kind": "objects"}, {"kind": "tags"}]}}],
                       batch_size=1, tasks=[{"name": "photos_vqa", "limit": 3}])
        p = tmp_path / "cfg.yaml"
        p.write_text(yaml.safe_dump(suite))
        return p

    env = {**os.environ, KEY_ENV: KEY, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "harness.cli", "run", "--results-dir", str(results), "--no-progress", "--config"]
    proc = subprocess.Popen([*cmd, str(config(own))], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while cached_answers(results) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(own.proc.pid, signal.SIGKILL)  # the server, not the run
    own.proc.wait(timeout=30)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "run stopped: the LLM endpoint" in err and "failed after 3 attempts" in err
    assert "run the same command again" in err
    n_before = cached_answers(results)
    assert 1 <= n_before < 3

    again = start_transformers_serve(smollm2_dir, tmp_path / "serve2.log")  # a new port: same cache keys
    try:
        done = subprocess.run([*cmd, str(config(again))], env=env, capture_output=True, text=True, timeout=600)
    finally:
        again.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"samples computed: {3 - n_before}, read from cache: {n_before}" in done.stderr
    with sqlite3.connect(results / "cache.sqlite") as c:
        n, keys, pairs = c.execute(
            "SELECT COUNT(*), COUNT(DISTINCT key), COUNT(DISTINCT unit || '|' || sample_id) FROM answers").fetchone()
        payloads = [json.loads(p) for (p,) in c.execute("SELECT payload FROM answers")]
    assert n == keys == pairs == 3
    assert not [p["error"] for p in payloads if p["error"]]
    # the resumed answers are the in-process ones (the first two samples are shared with `runs`)
    inproc = {sid: pred for (u, sid), (pred, _) in _predictions(runs["inproc"]).items() if u.startswith("text_conversion/pica") and "photos_vqa" in u}
    import pandas as pd

    csv = results / "runs" / "latest" / "results.csv"  # the resumed run: each run has its own folder
    assert set(pd.read_csv(csv)["n_failed"]) == {0.0}
    rows = [json.loads(line) for line in next((results / "mlartifacts").rglob("predictions.jsonl")).read_text().splitlines()]
    by_id = {r["sample_id"]: r["prediction"] for r in rows}
    assert inproc and all(by_id[s] == inproc[s] for s in inproc)


# --------------------------------------------------------------------------- fault proxy
class FaultProxy:
    """A local HTTP proxy that answers the first requests with scripted faults, then forwards.

    Faults: ("status", code, retry_after) | ("slow", seconds) | ("drop",) | ("pass",). Bounded: each
    request pops at most one fault; the proxy serves until ``close``.
    """

    def __init__(self, upstream: str, faults: list[tuple]) -> None:
        self.upstream = upstream
        self.faults = list(faults)
        self.seen: list[tuple[float, str, str]] = []  # (time, fault, prompt)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with proxy.lock:
                    fault = proxy.faults.pop(0) if proxy.faults else ("pass",)
                    what = fault[0] if fault[0] != "status" else str(fault[1])
                    proxy.seen.append((time.monotonic(), what, json.loads(body or b"{}").get("prompt", "")))
                if fault[0] == "status":
                    payload = json.dumps({"error": {"message": f"injected {fault[1]}"}}).encode()
                    self.send_response(fault[1])
                    if fault[2] is not None:
                        self.send_header("Retry-After", str(fault[2]))
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault[0] == "drop":
                    self.close_connection = True  # no status line: the client sees the connection die
                    return
                if fault[0] == "slow":  # no answer within the client's timeout (then the line is dropped)
                    time.sleep(fault[1])
                    self.close_connection = True
                    return
                req = urllib.request.Request(proxy.upstream + self.path, data=body,
                                             headers={"content-type": "application/json"}, method="POST")
                with urllib.request.urlopen(req, timeout=120) as r:
                    data = r.read()
                    status = r.status
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout) before the slow answer came
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _model(server: LocalServer, smollm2_dir: Path, base_url: str, **over: Any):
    from harness.config import ServedLLMSource
    from harness.models.served_llm import ServedLanguageModel

    cfg = ServedLLMSource(**{**_served_llm(base_url, server.model, smollm2_dir, api_key_env=None), **over})
    return ServedLanguageModel(cfg, backoff_base_s=0.05)


PROMPTS = ["The capital of France is", "Two plus two equals", "The colour of the sky is", "Cats like to"]


@pytest.mark.slow
def test_fault_proxy_retries_and_answers_equal_the_clean_run(server, smollm2_dir):
    from harness.models.llm import GenerationSettings

    settings = GenerationSettings(6, ("\n",))
    clean = _model(server, smollm2_dir, server.base_url).generate(PROMPTS, settings)
    faults = [("status", 429, 1), ("status", 500, None), ("slow", 6.0), ("drop",), ("status", 503, None)]
    proxy = FaultProxy(server.base_url.removesuffix("/v1"), faults)
    try:
        llm = _model(server, smollm2_dir, proxy.base_url, timeout_s=3.0, max_retries=5, max_concurrency=1)
        got = llm.generate(PROMPTS, settings)
    finally:
        proxy.close()
    assert [g.text for g in got] == [g.text for g in clean]
    assert got == clean  # tokens and finish too
    assert llm.stats.calls == len(PROMPTS)
    reasons = llm.stats.retry_reasons
    assert {"HTTP 429", "HTTP 500", "HTTP 503", "timeout"} <= set(reasons)
    assert any(r.startswith("connection") for r in reasons), reasons
    # one retry per fault (a loaded machine may add a timeout of its own, retried like the others)
    assert llm.stats.retries == 5 + reasons["timeout"] - 1 and [s for _, s, _ in proxy.seen][:5] == ["429", "500", "slow", "drop", "503"]
    # Retry-After: 1 was honoured (the 2nd request came at least a second after the 429)
    t429, first, prompt = proxy.seen[0]
    again = next(t for t, _, p in proxy.seen[1:] if p == prompt)
    assert first == "429" and again - t429 >= 1.0


@pytest.mark.slow
def test_other_4xx_is_not_retried_and_exhausted_retries_are_retryable(server, smollm2_dir):
    from harness.interface import RetryableFailure
    from harness.models.llm import GenerationSettings

    proxy = FaultProxy(server.base_url.removesuffix("/v1"), [("status", 400, None), ("status", 500, None),
                                                             ("status", 500, None), ("status", 500, None)])
    try:
        llm = _model(server, smollm2_dir, proxy.base_url, max_retries=2, max_concurrency=1)
        with pytest.raises(ValueError, match="HTTP 400"):
            llm.generate(PROMPTS[:1], GenerationSettings(4))
        assert len(proxy.seen) == 1  # not retried
        with pytest.raises(RetryableFailure, match="failed after 3 attempts"):
            llm.generate(PROMPTS[:1], GenerationSettings(4))
        assert [s for _, s, _ in proxy.seen] == ["400", "500", "500", "500"]
    finally:
        proxy.close()


# --------------------------------------------------------------------------- plan time
@pytest.mark.parametrize("paradigm", ["guided_decoding/magic", "guided_decoding/zerocap", "trained_adapter/frozen"])
@pytest.mark.slow
def test_paradigms_needing_llm_internals_refuse_a_served_llm_before_compute(paradigm, tmp_path):
    cfg = {
        "paradigms": [{"name": "text_conversion/pica"}, {"name": paradigm}], "tasks": [{"name": "photos_vqa"}],
        # nothing listens on this port: the refusal must come before any request (and any model load)
        "models": {"llm": {"source": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}},
    }
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--config", str(p), "--results-dir",
                           str(tmp_path / "res"), "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert f"config key 'paradigms[1]' ({paradigm}) cannot use models.llm.source: openai" in done.stderr
    assert "does not expose" in done.stderr
    assert not (tmp_path / "res").exists()  # nothing computed, nothing written


def test_served_config_keeps_secrets_and_speed_out_of_the_identity():
    from harness.config import ConfigError, parse_config

    base = {"paradigms": [{"name": "text_conversion/pica"}], "tasks": [{"name": "photos_vqa"}]}
    llm = {"source": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "m"}
    a = parse_config({**base, "models": {"llm": llm}})
    b = parse_config({**base, "models": {"llm": {**llm, "base_url": "http://10.0.0.2:9/v1", "max_concurrency": 64,
                                                 "api_key_env": "K", "timeout_s": 5, "max_retries": 1}}})
    c = parse_config({**base, "models": {"llm": {**llm, "api": "chat"}}})
    assert a.config_hash() == b.config_hash() != c.config_hash()
    with pytest.raises(ConfigError, match="must not carry credentials"):
        parse_config({**base, "models": {"llm": {**llm, "base_url": "https://user:secret@host/v1"}}})
    with pytest.raises(ConfigError, match=r"unknown config key 'models.llm.api_key' \(valid keys: api, api_key_env"):
        parse_config({**base, "models": {"llm": {**llm, "api_key": "sk-x"}}})


# --------------------------------------------------------------------------- served VLM
@pytest.mark.slow
def test_served_vlm_sends_images_as_data_urls_and_demos_as_earlier_turns(server):
    """The request a served VLM gets, read off the wire: each turn's image decodes to the sample's own
    pixels; demonstrations are earlier user/assistant turns. (The server here is the text model:
    ``transformers serve`` keeps only the text parts for it, so the answer checks transport, not vision.)"""
    import base64
    import io

    from PIL import Image
    from skimage import data as skdata

    from harness.interface import Request, Shot
    from harness.models.llm import GenerationSettings
    from paradigms.trained_adapter.served_vlm import ServedVlm, ServedVlmOptions

    cat, coffee = Image.fromarray(skdata.chelsea()), Image.fromarray(skdata.coffee())
    proxy = FaultProxy(server.base_url.removesuffix("/v1"), [])
    bodies: list[dict] = []
    orig = proxy.httpd.RequestHandlerClass.do_POST

    def record(handler) -> None:  # keep a copy of each request body, then forward as usual
        n = int(handler.headers.get("content-length", 0))
        raw = handler.rfile.read(n)
        bodies.append(json.loads(raw))
        handler.rfile = io.BytesIO(raw)
        orig(handler)

    proxy.httpd.RequestHandlerClass.do_POST = record
    try:
        opts = ServedVlmOptions(base_url=proxy.base_url, model=server.model, max_new_tokens=6)
        par = ServedVlm(SimpleBackbones(), opts, GenerationSettings(8, ("\n",)))
        shot = Shot("s1", "coffee", coffee, "What is in the cup?", "coffee")
        reqs = [Request("q1", "cat", cat, "What animal is this?", shots=(shot,)), Request("q2", "none", None, "?")]
        answers = par.answer_batch(reqs)
    finally:
        proxy.close()
    assert answers[1].error == "no image" and not answers[0].error
    (body,) = bodies
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[1]["content"] == "coffee"
    for m, img in ((msgs[0], coffee), (msgs[2], cat)):
        part = m["content"][0]["image_url"]["url"]
        assert part.startswith("data:image/png;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(part.split(",", 1)[1])))
        assert sent.tobytes() == img.convert("RGB").tobytes()
    assert msgs[2]["content"][1] == {"type": "text", "text": "What animal is this?"}
    assert body["max_tokens"] == 6 and body["temperature"] == 0.0 and body["seed"] == 0
    # the answer is the server's reply to the same conversation's text
    assert answers[0].llm_tokens_in > 0 and answers[0].trace["images"] == 2
    fp = par.fingerprint()
    assert "base_url" not in fp["options"] and fp["endpoint"].startswith(f"openai:chat:{server.model}")


class SimpleBackbones:
    seed = 0


# --------------------------------------------------------------------------- request building (no server)
def test_backoff_honours_retry_after_in_seconds_ms_and_http_date():
    import email.utils
    import random

    from harness.models.served_llm import backoff_s, retry_after_s

    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after_s({"retry-after": when}) <= 31
    assert retry_after_s({}) is None
    rng = random.Random(0)
    assert all(backoff_s(a, 3.0, rng) >= 3.0 for a in range(6))
    waits = [backoff_s(a, None, rng, base=0.5) for a in range(8)]
    assert all(0 <= w <= min(30.0, 0.5 * 2**a) for a, w in enumerate(waits))


def test_chat_api_continues_an_assistant_turn_only_with_prefill():
    from harness.config import ServedLLMSource
    from harness.interface import RetryableFailure
    from harness.models.llm import GenerationSettings
    from harness.models.served_llm import ServedLanguageModel

    base = dict(source="openai", base_url="http://127.0.0.1:9/v1", model="m", api="chat")
    llm = ServedLanguageModel(ServedLLMSource(**base))
    prompt = llm.chat_prompt("Q?", system="S") + "Thought: use a tool\nAction:"
    with pytest.raises(RetryableFailure, match="chat_prefill"):
        llm._job(prompt, GenerationSettings(4), ())
    kind, kw = ServedLanguageModel(ServedLLMSource(**base, chat_prefill=True))._job(prompt, GenerationSettings(4, ("\n",)), ("\n",))
    assert kind == "chat" and kw["messages"] == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "Thought: use a tool\nAction:"}]
    assert kw["extra_body"] == {"continue_final_message": True, "add_generation_prompt": False}
    assert kw["temperature"] == 0.0 and kw["stop"] == ["\n"] and kw["max_tokens"] == 4
    # a fresh turn (no tail) is plain messages
    kind, kw = llm._job(llm.chat_prompt("Q?"), GenerationSettings(4), ())
    assert kw["messages"] == [{"role": "user", "content": "Q?"}] and "extra_body" not in kw


def test_echoed_logprobs_count_the_continuation_tokens_only():
    """The arithmetic of endpoint log-probs on a vLLM/OpenAI-shaped ``logprobs`` object (prompt
    "Q: a" + continuation " cat", echoed, then one generated token)."""
    from types import SimpleNamespace

    from harness.models.served_llm import echoed_continuation_logprob

    lp = SimpleNamespace(tokens=["Q", ":", " a", " cat", "!"], text_offset=[0, 1, 2, 4, 8],
                         token_logprobs=[None, -1.0, -2.0, -0.5, -9.0])
    assert echoed_continuation_logprob(lp, 4, 8) == -0.5  # " cat" only; "!" was generated
    # a token straddling the boundary ("a c" merged) belongs to the continuation
    lp2 = SimpleNamespace(tokens=["Q:", " a c", "at"], text_offset=[0, 2, 6], token_logprobs=[None, -1.5, -0.25])
    assert echoed_continuation_logprob(lp2, 4, 8) == -1.75
