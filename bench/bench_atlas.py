"""Quick-demo analysis of the default model (stratified Brown, as the web app's quick demo), then the
compactness of network maps in the atlas layout vs the neuron-index layout (BENCHMARKS.md §8).

Usage: ``python bench/bench_atlas.py N_TEXTS MAX_TOKENS COMPONENTS RUN_DIR`` (the numbers in §8: 15 128 16).
"""

import math
import sys
import time

from fnprune.analysis.atlas import layout_compactness
from fnprune.analysis.networks import FunctionalNetworks, analyze
from fnprune.corpus import load_corpus, split_heldout
from fnprune.models.loading import load_model


def main() -> None:
    n_texts, max_tokens, k, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    t0 = time.time()
    model, tok = load_model("smollm2-135m", device="cpu")
    docs = split_heldout(load_corpus("brown", limit=math.ceil(n_texts * 10 / 9) + 1, sampling="stratified"))[0][:n_texts]
    print("genres", sorted({d.label for d in docs}), flush=True)
    fn = analyze(model, tok, docs, n_components=k, max_tokens=max_tokens, random_state=0, model_spec="smollm2-135m",
                 corpus_spec="brown")
    print(f"analyze {time.time() - t0:.1f} s", flush=True)
    t = time.time()
    fn.atlas()
    print(f"atlas {time.time() - t:.2f} s")
    t = time.time()
    fn.auto_names()
    print(f"names {time.time() - t:.2f} s")
    fn.save(out)
    fn = FunctionalNetworks.load(out)
    print(f"compactness at |z|>{fn.threshold}: atlas {layout_compactness(fn, 'atlas'):.3f}  "
          f"index {layout_compactness(fn, 'index'):.3f}")
    key = (abs(fn.maps).max(axis=2) > fn.threshold).sum(axis=-1).mean()
    print(f"mean key neurons per network {key:.1f} of {fn.width}")
    print("names", fn.auto_names()[:20])


if __name__ == "__main__":
    main()
