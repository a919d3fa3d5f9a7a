"""What the issue-19.4 probes share: the default model, Brown, and the two validation sets with the dense
model's per-document perplexity on them (``split_validation(docs, 120)[:10]`` of Brown and pydoc's
``split_validation(pydoc, 0)``, none of them calibrated on; each document alone on its first 512 tokens)."""

from fnprune.corpus import load_corpus, split_heldout, split_validation
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.loading import load_model


def validation_setup(n_calibration: int = 120):
    """``(model, tokenizer, calibration documents, {"brown": docs, "pydoc": docs}, {name: dense result})``."""
    model, tok = load_model("smollm2-135m")
    docs = load_corpus("brown")
    sets = {"brown": split_validation(docs, 120)[:10], "pydoc": split_validation(load_corpus("pydoc"), 0)[:10]}
    dense = {c: per_document_perplexity(model, tok, d, window=512, keep_units=True) for c, d in sets.items()}
    print({c: f"{len(sets[c])} docs, dense PPL {r['ppl']:.2f}" for c, r in dense.items()}, flush=True)
    return model, tok, split_heldout(docs)[0][:n_calibration], sets, dense
