"""Benchmark of the pruning recipe on the default model (BENCHMARKS.md §3): selection as constraints,
least-squares repair, network fidelity, the paper's rule, bootstrap intervals, two held-out corpora.

Stages (each writes ``OUT/<stage>/results.json`` + ``report.md``; a stage whose results exist is
skipped, so an interrupted run resumes):

1. ``analysis``: the networks (``analyze``: 40 calibration documents x 512 tokens, 128 components,
   seed 0) and the paper's one-run networks (``n_init=1``), saved as run directories;
2. ``validation``: candidate defaults on validation documents (Brown, index % 10 == 5, disjoint
   from calibration and held-out): which method + repair has the lowest PPL at 0.2 and 0.3;
3. ``test``: every method with its native compensation and with the repair, at 0.2 and 0.3, on
   held-out Brown and pydoc, fidelity of the 20 most stable networks, allocation controls;
4. ``chosen``: the 20 most stable networks chosen (constraints) at 0.2;
5. ``validation2``: a second round on the same validation documents, for the candidates the first
   round left out: Wanda-sp and FLAP, each with the one-shot and the sequential least-squares repair;
6. ``unconstrained``: FLAP at 0.2 without a choice, with the fidelity of the 20 most stable networks
   (the control of ``chosen`` when the test stage is not run, e.g. with another ``--components``);
7. ``default-test``: the default chosen by ``bench/bench_default_choice.py`` (obs, calibrated on
   ``--calib-docs`` documents, 120 by default) against FLAP + bias / + lstsq on the same calibration,
   held-out Brown and pydoc, fidelity of the 20 most stable networks;
8. ``default-chosen``: obs with those 20 networks chosen at 0.2 (its control: ``default-test``'s
   unconstrained obs row, paired by ``recipe_tables.py``).

Usage: ``python bench/bench_recipe.py OUT [--heldout-docs 20] [--stages analysis,validation,test,chosen]``
(``python bench/bench_recipe.py bench/results/recipe32 --stages default-test,default-chosen`` for 7-8).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--heldout-docs", type=int, default=20)
    parser.add_argument("--validation-docs", type=int, default=10)
    parser.add_argument("--ratios", default="0.2,0.3")
    parser.add_argument("--stages", default="analysis,validation,test,chosen,validation2")
    parser.add_argument("--calib-docs", type=int, default=120, help="calibration documents of stages 7-8")
    parser.add_argument("--components", type=int, default=None,
                        help="components of the networks' analysis (default: the library's; bench/results/recipe "
                             "was made with 128, the previous default); the paper's run always uses 128")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")

    from fnprune.analysis.networks import FunctionalNetworks, analyze
    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.evaluation.compare import compare
    from fnprune.evaluation.fidelity import most_stable_networks
    from fnprune.models.loading import load_model
    from fnprune.progress import tqdm_progress

    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    model, tok = load_model("smollm2-135m")
    docs = load_corpus("brown")
    calib = split_heldout(docs)[0][:40]
    runs = {}
    # the paper's one-run networks are needed only by the stages that compare the paper's method
    needs_paper = bool({"validation", "test"} & set(stages))
    for name, kwargs in (("run", {} if args.components is None else {"n_components": args.components}),
                         ("paper_run", {"n_components": 128, "n_init": 1})):
        path = out / name
        if name == "paper_run" and not needs_paper and not (path / "run.json").exists():
            runs[name] = None
            continue
        if not (path / "run.json").exists():
            t0 = time.perf_counter()
            fn = analyze(model, tok, calib, max_tokens=512, random_state=0, **kwargs,
                         model_spec="smollm2-135m", corpus_spec="brown", progress=tqdm_progress())
            fn.save(path)
            timings[f"analyze_{name}_s"] = time.perf_counter() - t0
            (out / "timings.json").write_text(json.dumps(timings, indent=1))
        runs[name] = runs.get(name) or FunctionalNetworks.load(path)
    fn, paper_fn = runs["run"], runs["paper_run"]
    common = dict(model=model, tokenizer=tok, docs=docs, fn=fn, paper_fn=paper_fn, n_calib=40, max_tokens=512,
                  windows=(512,), progress=tqdm_progress())

    def stage(name: str, ratios: str | None = None, **kwargs) -> None:
        if name not in stages or (out / name / "results.json").exists():
            return
        t0 = time.perf_counter()
        compare("smollm2-135m", "brown", ratios or args.ratios, out_dir=out / name, **common, **kwargs)
        timings[f"{name}_s"] = time.perf_counter() - t0
        (out / "timings.json").write_text(json.dumps(timings, indent=1))

    stage("validation", methods="fn-flap,flap,fn", repairs="native,lstsq", split="validation",
          n_heldout=args.validation_docs, fidelity=None, reference=None)
    stage("test", methods="paper,fn,fn-flap,wanda-sp,flap", repairs="native,lstsq", controls=True,
          extra_corpora=("pydoc",), n_heldout=args.heldout_docs, fidelity=20)
    stage("validation2", methods="flap,wanda-sp", repairs="lstsq,sequential", split="validation",
          n_heldout=args.validation_docs, fidelity=None, reference=None)
    stage("unconstrained", methods="flap", repairs="native,lstsq", n_heldout=args.heldout_docs, fidelity=20,
          ratios="0.2")
    top = most_stable_networks(fn, 20)
    default_common = {**common, "n_calib": args.calib_docs}
    for name, kwargs in (("default-test", dict(methods="obs,flap", extra_corpora=("pydoc",), fidelity=20)),
                         ("default-chosen", dict(methods="obs", networks=top, ratios="0.2"))):
        if name not in stages or (out / name / "results.json").exists():
            continue
        t0 = time.perf_counter()
        compare("smollm2-135m", "brown", kwargs.pop("ratios", args.ratios), repairs="native,lstsq",
                n_heldout=args.heldout_docs, out_dir=out / name, **default_common, **kwargs)
        timings[f"{name}_s"] = time.perf_counter() - t0
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
    if "chosen" in stages and not (out / "chosen" / "results.json").exists():
        t0 = time.perf_counter()
        compare("smollm2-135m", "brown", "0.2", methods="fn-flap,flap", repairs="native,lstsq", networks=top,
                n_heldout=args.heldout_docs, out_dir=out / "chosen", **common)
        timings["chosen_s"] = time.perf_counter() - t0
        (out / "timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
