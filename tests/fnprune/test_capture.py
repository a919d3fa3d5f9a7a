"""The activation store: padding excluded, order kept, atomic, clear errors."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, OPTConfig

from fnprune.analysis.capture import ActivationStore, capture_activations
from fnprune.corpus import Document
from fnprune.errors import ConfigError, CorpusError, FnpruneError
from fnprune.models.loading import byte_tokenizer, load_model

DOCS = [Document("a", "The quick brown fox jumps.", "x"), Document("b", "Hi.", "y"),
        Document("c", "A somewhat longer document about neurons and networks.", "x")]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", device="cpu")


def test_padding_never_recorded_and_order_kept(tiny, tmp_path):
    model, tok = tiny
    one = capture_activations(model, tok, DOCS, tmp_path / "b1", batch_size=1, dtype="float32")
    three = capture_activations(model, tok, DOCS, tmp_path / "b3", batch_size=3, dtype="float32")
    lengths = [len(tok(d.text)["input_ids"]) for d in DOCS]
    assert one.n_tokens == three.n_tokens == sum(lengths)
    for layer in one.layers:
        np.testing.assert_allclose(one.layer_matrix(layer), three.layer_matrix(layer), atol=1e-4)
    assert three.token_doc.tolist() == sum(([i] * n for i, n in enumerate(lengths)), [])
    assert three.token_pos.tolist() == sum((list(range(n)) for n in lengths), [])
    assert "".join(three.token_text[:lengths[0]]) == DOCS[0].text
    assert three.token_labels[:1] == ["x"] and [d["label"] for d in three.documents] == ["x", "y", "x"]


def test_capture_tokenises_like_calibration(tiny, tmp_path):
    """One tokenisation (fnprune.tokens): capture records every non-special id of the same cut documents
    that calibration, perplexity and fidelity feed the model; a truncated document loses its end."""
    from fnprune.tokens import encode_documents

    model, tok = tiny
    docs = DOCS + [Document("d", "<eos>Hi<eos>", "z"), Document("e", "", "z")]
    store = capture_activations(model, tok, docs, tmp_path / "s", max_tokens=8, batch_size=2)
    ids = encode_documents(tok, docs, 8, min_tokens=0)
    assert [len(i) for i in ids] == [8, 3, 8, 4, 0]
    assert encode_documents(tok, docs, 8) == [i for i in ids if len(i) >= 2]
    assert [d["n_tokens"] for d in store.documents] == [8, 3, 8, 2, 0]  # the two <eos> are fed, not recorded
    assert store.token_ids.tolist() == [t for i in ids for t in i if t != tok.eos_token_id]
    assert "".join(store.token_text[:8]) == DOCS[0].text[:8]


def test_store_matches_a_plain_forward_pass(tiny, tmp_path):
    model, tok = tiny
    store = capture_activations(model, tok, DOCS[:1], tmp_path / "s", dtype="float32", signals=("act", "up", "down_in"))
    ids = tok(DOCS[0].text, return_tensors="pt").input_ids
    mlp = model.model.layers[2].mlp
    with torch.no_grad():
        h = {}
        hook = mlp.register_forward_hook(lambda m, i, o: h.__setitem__("x", i[0]))
        model(ids)
        hook.remove()
        act = mlp.act_fn(mlp.gate_proj(h["x"]))[0]
        up = mlp.up_proj(h["x"])[0]
    X = store.layer_matrix(2)
    w = store.width
    np.testing.assert_allclose(X[:, :w], act.numpy(), atol=1e-5)
    np.testing.assert_allclose(X[:, w:2 * w], up.numpy(), atol=1e-5)
    np.testing.assert_allclose(X[:, 2 * w:], (act * up).numpy(), atol=1e-5)


def test_float16_store_and_layer_subset(tiny, tmp_path):
    model, tok = tiny
    store = capture_activations(model, tok, DOCS, tmp_path / "s", layers=[1, 3])
    assert store.layers == [1, 3] and store.layer_matrix(1).dtype == np.float16
    with pytest.raises(ConfigError, match="not captured"):
        store.layer_matrix(0)
    reopened = ActivationStore.open(tmp_path / "s")
    assert reopened.n_tokens == store.n_tokens


def test_special_tokens_are_not_recorded(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(OPTConfig(vocab_size=258, hidden_size=16, ffn_dim=24, num_hidden_layers=2,
                                                       num_attention_heads=2, word_embed_proj_dim=16,
                                                       pad_token_id=0, bos_token_id=1, eos_token_id=1)).eval()
    tok = byte_tokenizer()
    tok.add_special_tokens({"bos_token": "<eos>"})
    tok._tokenizer.post_processor = None
    store = capture_activations(model, tok, DOCS, tmp_path / "o", batch_size=2)
    assert store.n_tokens == sum(len(d.text.encode()) for d in DOCS)  # OPT hooks give 2-D tensors; handled


def test_bad_inputs_leave_nothing_behind(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(CorpusError):
        capture_activations(model, tok, [], tmp_path / "e")
    with pytest.raises(ConfigError, match="layers"):
        capture_activations(model, tok, DOCS, tmp_path / "e", layers=[7])
    with pytest.raises(ConfigError, match="signals"):
        capture_activations(model, tok, DOCS, tmp_path / "e", signals=("gate",))
    with pytest.raises(ConfigError, match="max_tokens"):
        capture_activations(model, tok, DOCS, tmp_path / "e", max_tokens=1)
    broken, _ = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        broken.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FnpruneError, match="non-finite"):
        capture_activations(broken, tok, DOCS, tmp_path / "e")
    assert not list(tmp_path.iterdir())


def test_capturing_a_layer_subset_gives_the_same_values(tiny, tmp_path):
    # the forward pass stops after the last captured layer; what it recorded must not change
    model, tok = tiny
    full = capture_activations(model, tok, DOCS, tmp_path / "all", dtype="float32")
    part = capture_activations(model, tok, DOCS, tmp_path / "part", dtype="float32", layers=[1])
    np.testing.assert_array_equal(np.asarray(part.layer_matrix(1)), np.asarray(full.layer_matrix(1)))
