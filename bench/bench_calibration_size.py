"""Does more calibration text help the default recipe (FLAP + least-squares repair)? (BENCHMARKS.md §3b)

    python bench/bench_calibration_size.py --split validation     # choose here
    python bench/bench_calibration_size.py --split test           # report here

The same documents for every calibration size, so the comparison is paired: the validation split is
``split_validation(docs, max(--sizes))`` (index % 10 == 5, disjoint from every calibration set tried
and from the held-out documents), the test split is the first 20 held-out documents (index % 10 ==
0) of §3b. Each document is scored alone on its first 512 tokens. Prints the perplexity per size
and ratio, and the paired bootstrap ratio of every size against the first one.
"""

from __future__ import annotations

import argparse
import copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--sizes", default="40,120", help="calibration documents (x 512 tokens) to compare")
    parser.add_argument("--ratios", default="0.2,0.3")
    parser.add_argument("--docs", type=int, default=None, help="evaluation documents (10 validation / 20 test)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]

    from fnprune.compare import paired_ratio
    from fnprune.corpus import load_corpus, split_heldout, split_validation
    from fnprune.evaluate import per_document_perplexity
    from fnprune.models import load_model
    from fnprune.networks import FunctionalNetworks
    from fnprune.recipe import Calibration, PruningSpec, prune_with_networks

    model, tok = load_model("smollm2-135m")
    docs = load_corpus("brown")
    fn = FunctionalNetworks.load("bench/results/recipe/run")   # FLAP does not use the networks' scores
    calib = split_heldout(docs)[0]
    if args.split == "validation":
        evaluation = split_validation(docs, max(sizes))[:args.docs or 10]
    else:
        evaluation = split_heldout(docs)[1][:args.docs or 20]
    dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
    print(f"{args.split}: {len(evaluation)} documents, dense PPL {dense['ppl']:.2f}", flush=True)
    res = {}
    for n in sizes:
        calibration = Calibration(tok, calib[:n], 512)
        for ratio in ratios:
            pruned = copy.deepcopy(model)
            prune_with_networks(pruned, fn, PruningSpec(method="flap", target_ratio=ratio, repair="lstsq"), calibration)
            res[n, ratio] = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
            print(f"calibration {n} docs, ratio {ratio}: PPL {res[n, ratio]['ppl']:.2f} "
                  f"({res[n, ratio]['ppl'] / dense['ppl']:.3f}x dense)", flush=True)
            del pruned
    for n in sizes[1:]:
        for ratio in ratios:
            p = paired_ratio(res[n, ratio], res[sizes[0], ratio])
            print(f"ratio {ratio}: {n} / {sizes[0]} docs paired {p['ratio']:.3f} [{p['low']:.3f}, {p['high']:.3f}]")


if __name__ == "__main__":
    main()
