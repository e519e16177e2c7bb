"""Served-LLM throughput: the same requests sent one at a time and at concurrency 4, 8 and 16, against
``transformers serve`` with and without continuous batching, in one run; ratios are to sequential.

Every request goes through mmbench's own client (``ServedLanguageModel``: the async OpenAI client,
bounded concurrency, retries), so the numbers are what ``models.llm.max_concurrency`` buys. Answers
at every concurrency are checked against the sequential ones (greedy decoding).

    python benchmarks/bench_served.py                       # packaged SmolLM2-135M on CPU, 32 requests
    python benchmarks/bench_served.py --requests 16 --no-write
    python benchmarks/bench_served.py --base-url http://host:8000/v1 --model NAME   # your own server
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _report import add_output_args, emit
from harness.config import ServedLLMSource
from harness.models.llm import GenerationSettings, _convert_packaged, default_cache_dir
from harness.models.serve_local import start_transformers_serve
from harness.models.served_llm import ServedLanguageModel
from harness.tracking import hardware

QUESTIONS = [
    "What colour is the sky on a clear day?", "Name an animal that lives in the sea.",
    "What is two plus three?", "Describe a cat in a few words.", "What do people use umbrellas for?",
    "Which season comes after winter?", "What is the capital of Italy?", "Name a fruit that is yellow.",
]
LEVELS = (1, 4, 8, 16)


def measure(base_url: str, model: str, tokenizer: dict | None, n: int, new_tokens: int) -> dict:
    """Seconds and tokens/s for the same ``n`` requests at each concurrency level."""
    settings = GenerationSettings(new_tokens, ())
    out: dict = {}
    reference = None
    for c in LEVELS:
        cfg = ServedLLMSource(source="openai", base_url=base_url, model=model, max_concurrency=c,
                              tokenizer=tokenizer, max_retries=0, timeout_s=600)
        llm = ServedLanguageModel(cfg)
        prompts = [llm.chat_prompt(QUESTIONS[i % len(QUESTIONS)] + f" (#{i})") for i in range(n)]
        llm.generate(prompts[:1], settings)  # warm-up: connection, first-call allocations
        t0 = time.perf_counter()
        gens = llm.generate(prompts, settings)
        secs = time.perf_counter() - t0
        llm.close()
        texts = [g.text for g in gens]
        reference = reference or texts
        out[str(c)] = {
            "seconds": round(secs, 3),
            "tokens_out_per_s": round(sum(g.tokens_out for g in gens) / secs, 2),
            "requests_per_s": round(n / secs, 3),
            "answers_equal_sequential": texts == reference,
        }
        print(f"concurrency {c}: {out[str(c)]}", file=sys.stderr, flush=True)  # progress on long runs
    seq = out["1"]["seconds"]
    for c in LEVELS:
        out[str(c)]["ratio_to_sequential"] = round(seq / out[str(c)]["seconds"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the local server")
    ap.add_argument("--base-url", default=None, help="measure an already running server instead")
    ap.add_argument("--model", default=None, help="model id on --base-url")
    add_output_args(ap)
    args = ap.parse_args()

    result: dict = {"benchmark": "served_llm_concurrency", "requests": args.requests, "new_tokens": args.new_tokens,
                    "levels": list(LEVELS), "hardware": hardware()}
    if args.base_url:
        result["external"] = measure(args.base_url, args.model, None, args.requests, args.new_tokens)
        emit(result, args, "served_external.json")
        return
    folder = _convert_packaged("smollm2-135m-instruct", default_cache_dir())
    tok = {"source": "local", "name": str(folder), "device": "cpu", "dtype": "float32"}
    result["model"] = "smollm2-135m-instruct (packaged, float32, CPU)"
    result["server"] = "transformers serve"
    result["server_threads"] = args.threads
    logs = Path(tempfile.mkdtemp())
    for label, cb in (("no_continuous_batching", False), ("continuous_batching", True)):
        print(label, file=sys.stderr, flush=True)
        srv = start_transformers_serve(folder, logs / f"{label}.log", continuous_batching=cb, threads=args.threads)
        try:
            result[label] = measure(srv.base_url, srv.model, tok, args.requests, args.new_tokens)
        finally:
            srv.stop()
    emit(result, args, "served_cpu.json")


if __name__ == "__main__":
    main()
