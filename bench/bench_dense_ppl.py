"""The dense default model's held-out Brown perplexity under each protocol BENCHMARKS.md quotes (issue 23.4):
why the dense figure is 41.95 in one table, 39.64 in another and 40.53 in a third.

    python bench/bench_dense_ppl.py --out bench/results/dense_ppl_protocols.json

- ``compare``: ``fnprune compare`` / ``bench/bench_recipe.py`` (§3, §3b's test tables): the first 20
  held-out Brown documents (corpus order, index % 10 == 0), each cut to its first 512 tokens,
  EOS-separated and concatenated, scored in non-overlapping windows of 512 (a window spans two documents).
- ``per_document``: ``bench/bench_default_choice.py`` (§3b's obs tables): the same 20 documents, each
  scored alone on its first 512 tokens (padding masked).
- ``web_quick_demo``: the web app's pruning job after a Quick demo analysis (§9): the analysis samples
  Brown ``stratified`` across genres, so its held-out documents (every 10th of a stratified list of
  ``max(ceil(40 * 10 / 9) + 1, 10 * 20)`` = 200 documents) are other documents; scored as ``compare``.

Numbers only (perplexities, token counts, document ids) in the result file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/dense_ppl_protocols.json"))
    args = parser.parse_args()

    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.evaluation.metrics import per_document_perplexity, perplexity
    from fnprune.io import atomic_write_json
    from fnprune.models import load_model

    model, tok = load_model("smollm2-135m")
    first = split_heldout(load_corpus("brown"))[1][:20]
    n_web = max(math.ceil(40 * 10 / 9) + 1, 10 * 20)   # backend/app/services/prunings.py: run_pruning's limit
    web = split_heldout(load_corpus("brown", limit=n_web, sampling="stratified"))[1][:20]
    out = {"loadavg_before": os.getloadavg()}
    for name, docs, per_doc in (("compare", first, False), ("per_document", first, True),
                                ("web_quick_demo", web, False)):
        r = (per_document_perplexity(model, tok, docs, window=512) if per_doc
             else perplexity(model, tok, docs, window=512, max_tokens_per_doc=512))
        out[name] = {"ppl": round(r["ppl"], 2), "n_tokens": r["n_tokens"], "n_windows": r["n_windows"],
                     "doc_ids": [d.id for d in docs]}
        print(f"{name}: PPL {r['ppl']:.2f} on {r['n_tokens']:,} predicted tokens, {r['n_windows']} windows",
              flush=True)
    out["shared_documents_compare_web"] = len(set(out["compare"]["doc_ids"]) & set(out["web_quick_demo"]["doc_ids"]))
    out["loadavg_after"] = os.getloadavg()
    atomic_write_json(args.out, out, indent=1)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)}))


if __name__ == "__main__":
    main()
