"""Time llama.cpp through llama-cpp-python on a GGUF; runs in the peer's own venv (benchmarks only).

    python llama_cpp_time.py F16.gguf q8_0|q4_0 THREADS PROMPT NEW LONG_PROMPT RUNS

Quantizes the f16 GGUF with llama.cpp's own quantizer (once, next to it), then per run: evaluates a
PROMPT-token prompt and times NEW single-token decode steps, and times a LONG_PROMPT-token prefill
from an empty cache (n_batch 512, llama.cpp's default). Prints one JSON object: medians over RUNS
after one warm-up run.
"""

import ctypes
import json
import os
import random
import statistics
import sys
import time

import llama_cpp

src, kind = sys.argv[1], sys.argv[2]
threads, prompt, new, long_prompt, runs = map(int, sys.argv[3:8])
path = src.replace("-f16.gguf", f"-{kind}.gguf")
if not os.path.exists(path):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[kind]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(src.encode(), path.encode(), ctypes.byref(params)) != 0:
        sys.exit(f"llama.cpp could not quantize {src} to {kind}")
llm = llama_cpp.Llama(
    path, n_threads=threads, n_threads_batch=threads, n_ctx=max(2048, long_prompt + 64), n_batch=512, verbose=False
)
rng = random.Random(0)


def tokens(n: int) -> list[int]:
    return [rng.randrange(100, 20000) for _ in range(n)]


decode, prefill = [], []
for run in range(runs + 1):
    llm.reset()
    llm.eval(tokens(prompt))
    start = time.perf_counter()
    for _ in range(new):
        llm.eval(tokens(1))
    d = new / (time.perf_counter() - start)
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens(long_prompt))
    p = long_prompt / (time.perf_counter() - start)
    if run:
        decode.append(d)
        prefill.append(p)
print(
    json.dumps(
        {
            "kind": kind,
            "gguf": path,
            "decode_tok_s": statistics.median(decode),
            "prefill_tok_s": statistics.median(prefill),
            "decode_runs": decode,
            "prefill_runs": prefill,
            "llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        }
    )
)
