#!/usr/bin/env bash
# The GPU measurements of the performance issue, as one command for a lent GPU machine (H100).
#
# It needs only torch + transformers (the device image has both); results go to $OUT (or
# benchmarks/results when OUT is unset) as JSON with the GPU named, plus a log.
#
#   bash benchmarks/gpu_suite.sh            # ~4-6 minutes on an H100
#   bash benchmarks/gpu_suite.sh --quick    # batch 1 only, fewer tokens: a smoke test
#
# What it measures (docs/performance.md explains each number):
#   1. greedy decode steps/s of a random-initialised 1.17B Llama-style model in bf16: plain
#      generate() vs generate(cache_implementation="static") vs mmbench's static engine with CUDA
#      graphs, at batch 1, 8 and 32, against the memory-bandwidth bound measured in the same process;
#      token agreement of the engine with generate();
#   2. the same engine without CUDA graphs (isolates what the graphs buy).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
batches="1,8,32"
tokens=128
if [[ "${1:-}" == "--quick" ]]; then batches="1"; tokens=32; fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee "$out/gpu_suite.log"
status=0
timeout 420 python3 benchmarks/bench_decode.py --device cuda --size llama-1b --hf-static \
    --batches "$batches" --new-tokens "$tokens" --out "$out" 2>&1 | tee -a "$out/gpu_suite.log" || status=1
timeout 120 python3 benchmarks/bench_decode.py --device cuda --size llama-1b --no-graphs \
    --batches 1 --new-tokens 64 --repeats 2 --out "$out/no_graphs" 2>&1 | tee -a "$out/gpu_suite.log" || status=1
[[ -f "$out/no_graphs/decode_cuda_llama-1b.json" ]] && mv "$out/no_graphs/decode_cuda_llama-1b.json" "$out/decode_cuda_llama-1b_no_graphs.json"
exit $status
