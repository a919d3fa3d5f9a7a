"""Capture the default model's activations on the benchmark calibration set (40 Brown docs x 512 tokens).

    python bench/capture_default.py OUT_DIR [--texts 40] [--max-tokens 512]

Prints wall time and peak RSS. The store is reused by bench_canica.py.
"""
import argparse
import resource
import time

from fnprune.analysis.capture import capture_activations
from fnprune.corpus import load_corpus, split_heldout
from fnprune.models.loading import load_model

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--texts", type=int, default=40)
parser.add_argument("--max-tokens", type=int, default=512)
parser.add_argument("--model", default="smollm2-135m")
args = parser.parse_args()
t0 = time.perf_counter()
model, tok = load_model(args.model)
t1 = time.perf_counter()
docs = split_heldout(load_corpus("brown"))[0][:args.texts]
store = capture_activations(model, tok, docs, args.out, max_tokens=args.max_tokens)
t2 = time.perf_counter()
print(f"load {t1 - t0:.1f} s, capture {t2 - t1:.1f} s, {store.n_tokens} tokens, "
      f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
