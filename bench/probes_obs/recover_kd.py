"""Probe (issue 19.4): recovery by distillation after obs, on the validation split.

    python bench/probes_obs/recover_kd.py [ratios] [learning rates] [epochs] [out.json]

The shipped recipe (obs + least-squares repair, 120 calibration documents x 512 tokens) is layer-local:
each layer's ``down`` is re-fitted to the dense layer's output, never to the model's output. This
probe then trains the pruned model's MLP weights (every layer's gate / up / down; attention,
embeddings and norms frozen) to match the *dense model's* next-token distributions on the same
calibration tokens: ``KL(p_dense || p_pruned)`` per real token, AdamW (no weight decay), linear
warm-up over the first 10% of the steps then cosine decay, batches of 4 documents in a seeded order.
The target is the dense model's distribution, not the text's next tokens, so the pruned model is
pulled back toward the model it came from rather than adapted to Brown (a fine-tune on Brown's own
tokens would also make the dense model better on Brown -- a shortcut for a "x dense" figure).

The run of 2026-12-07 used this file's own copy of the training loop, from which
:func:`fnprune.pruning.recover.distill` was then written with the same settings (warm-up steps, schedule,
batch order, loss, parameters); the probe now calls the library's.

Evaluation: the 10 Brown validation documents of ``bench_default_choice.py`` (``split_validation(docs,
120)[:10]``) and pydoc's validation documents (``split_validation(pydoc, 0)``, 7, none trained on),
each alone on its first 512 tokens; paired bootstrap ratios to the same pruned model before recovery.

The rule, written before the run of 2026-12-07: recovery is worth building into the library only if,
at both 0.2 and 0.3, one learning rate lowers Brown validation perplexity with the paired interval
below 1 and does not raise pydoc's (paired interval not above 1); the learning rate is the one with
the lowest mean Brown paired ratio over the two ratios. Its held-out numbers are then measured with
that learning rate, never tuned on them.
"""

import copy
import json
import sys
import time
from pathlib import Path

from _validation import validation_setup

from fnprune.evaluation.compare import paired_ratio
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.recover import distill
from fnprune.pruning.spec import PruningSpec

RATIOS = [float(r) for r in (sys.argv[1] if len(sys.argv) > 1 else "0.2,0.3").split(",")]
LRS = [float(r) for r in (sys.argv[2] if len(sys.argv) > 2 else "3e-5,1e-4").split(",")]
EPOCHS = int(sys.argv[3]) if len(sys.argv) > 3 else 1
OUT = Path(sys.argv[4]) if len(sys.argv) > 4 else Path("bench/results/recover_kd_validation.json")


model, tok, calib_docs, sets, dense = validation_setup(120)
cal = Calibration(tok, calib_docs, 512)
cal.down_stats(model, second_moments=True, weighted=True)
rows = []
for ratio in RATIOS:
    pruned = copy.deepcopy(model)
    prune_with_networks(pruned, None, PruningSpec(method="obs", target_ratio=ratio, repair="lstsq"), cal)
    before = {c: per_document_perplexity(pruned, tok, d, window=512, keep_units=True) for c, d in sets.items()}
    print(f"{ratio} obs: " + ", ".join(f"{c} {r['ppl']:.2f} ({r['ppl'] / dense[c]['ppl']:.3f}x)"
                                       for c, r in before.items()), flush=True)
    for lr in LRS:
        student = copy.deepcopy(pruned)
        t0 = time.perf_counter()
        rec = distill(student, model, tok, calib_docs, epochs=EPOCHS, lr=lr, max_tokens=512)
        seconds = time.perf_counter() - t0
        row = {"ratio": ratio, "lr": lr, "epochs": EPOCHS, "train_s": seconds,
               "kl_mean_first_quarter": rec.kl_first, "kl_mean_last_quarter": rec.kl_last}
        for c, d in sets.items():
            r = per_document_perplexity(student, tok, d, window=512, keep_units=True)
            p = paired_ratio(r, before[c])
            row[c] = {"ppl_before": before[c]["ppl"], "ppl": r["ppl"], "x_dense": r["ppl"] / dense[c]["ppl"],
                      "paired_vs_before": p, "x_dense_interval": paired_ratio(r, dense[c])}
            print(f"  lr {lr} {c}: PPL {before[c]['ppl']:.2f} -> {r['ppl']:.2f} ({r['ppl'] / dense[c]['ppl']:.3f}x dense), "
                  f"paired {p['ratio']:.3f} [{p['low']:.3f}, {p['high']:.3f}]", flush=True)
        print(f"  lr {lr}: {seconds:.0f} s, KL {row['kl_mean_first_quarter']:.4f} -> {row['kl_mean_last_quarter']:.4f}",
              flush=True)
        rows.append(row)
        del student
OUT.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "calib_docs": 120,
                           "n_docs": {c: len(d) for c, d in sets.items()},
                           "dense_ppl": {c: r["ppl"] for c, r in dense.items()}, "rows": rows}, indent=1))
print(f"wrote {OUT}")
