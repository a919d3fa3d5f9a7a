"""A pruning's ``protect`` (issue 22): refused before work with the field named; the result's block, its
numbers against the same pruning without protection and the library's own measurements."""

import json

import pytest

CODE = ["def f(x):\n    return x * 2  # double", "for i in range(10):\n    print(i, i ** 2)",
        "class A:\n    def __init__(self):\n        self.x = []", "import os\nprint(os.path.join('a', 'b'))"]


def _upload_code(client) -> str:
    """An uploaded corpus of 24 short code texts, half labelled ``code``: its name."""
    lines = [json.dumps({"text": CODE[i % 4] * (1 + i % 3), "label": "code" if i % 2 else "other"}) for i in range(24)]
    response = client.post("/api/corpora", files={"file": ("code.jsonl", "\n".join(lines).encode())})
    assert response.status_code == 201, response.text
    return response.json()["name"]


def _prune(client, analysis_id, **extra):
    body = {"analysis_id": analysis_id, "target_ratio": 0.2, "n_heldout": 3, "calibration_texts": 10} | extra
    response = client.post("/api/prunings", json=body)
    assert response.status_code == 202, response.text
    job = client.get(f"/api/prunings/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job
    return job["result"] | {"id": job["id"]}


@pytest.mark.parametrize("protect, extra, status, field", [
    ({"corpus": "nope"}, {}, 404, "protect.corpus"),
    ({"corpus": "upload:000000000000"}, {}, 404, "protect.corpus"),
    ({"corpus": "pydoc", "genres": ["news"]}, {}, 422, "protect.genres"),
    ({"corpus": "../x"}, {}, 422, "protect.corpus"),
    ({"texts": ["  \n "]}, {}, 422, "protect.texts.0"),
    ({"texts": []}, {}, 422, "protect.texts"),
    ({"corpus": "pydoc", "texts": ["def f(): pass"]}, {}, 422, "protect"),
    ({"texts": ["x"], "genres": ["a"]}, {}, 422, "protect"),
    ({}, {}, 422, "protect"),
    ({"corpus": "pydoc", "by": "magic"}, {}, 422, "protect.by"),
    ({"corpus": "pydoc", "by": "networks", "networks": 2048}, {}, 422, "protect.networks"),
    ({"corpus": "pydoc", "networks": 0}, {}, 422, "protect.networks"),
    ({"corpus": "pydoc", "docs": 0}, {}, 422, "protect.docs"),
    ({"corpus": "pydoc", "compare_unconstrained": True}, {"evaluate": False}, 422, "protect.compare_unconstrained"),
    ({"corpus": "pydoc"}, {"calibration_texts": 1}, 422, "calibration_texts"),
])
def test_bad_protect_is_refused_before_work(finished, protect, extra, status, field):
    client, analysis_id = finished
    before = len(client.get("/api/prunings").json())
    response = client.post("/api/prunings", json={"analysis_id": analysis_id, "protect": protect} | extra)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert len(client.get("/api/prunings").json()) == before  # nothing queued


def test_calibration_mixing_block_and_the_unconstrained_pruning(finished, settings):
    from backend.app.services import catalog
    from fnprune.models import load_model
    from fnprune.pruning.job import heldout_perplexity
    from fnprune.pruning.protect import protect_corpus

    client, analysis_id = finished
    code = _upload_code(client)
    news = {"corpus": code, "genres": ["code"], "docs": 4}  # not the analysis' corpus (pydoc)
    r = _prune(client, analysis_id, protect=news | {"compare_unconstrained": True})
    plain = _prune(client, analysis_id)  # the same request without protect
    p = r["protect"]
    assert p["source"] == f"{code}:code" and p["by"] == "calibration" and p["proposal"] is None
    mix = p["mixing"]
    # 10 calibration documents: the last one's tokens replaced by protected documents, as recorded
    assert mix["calibration_docs"] == 9 and 1 <= mix["protect_docs"] <= 4 == p["protect_docs"]
    masks = client.get(f"/api/prunings/{r['id']}/download/masks").json()  # the pruning's own record
    assert masks["calibration_docs"]["used"] == mix["calibration_docs"] + mix["protect_docs"]
    assert client.get(f"/api/prunings/{plain['id']}/download/masks").json()["calibration_docs"]["used"] == 10
    assert r["keep_digest"] != plain["keep_digest"]  # the mixed calibration chose other neurons
    # unconstrained = the pruning without protect, computed in the same job
    assert p["unconstrained_keep_digest"] == plain["keep_digest"]
    a, b = p["calibration_domain"], p["protected_domain"]
    assert a["n_docs"] == 3 and a["dense"] == r["dense"]["ppl"] and a["pruned"] == r["pruned"]["ppl"]
    assert a["unconstrained"] == pytest.approx(plain["pruned"]["ppl"], rel=1e-6)
    # B: the held-out uploaded code (disjoint from the protecting documents), by the library's protocol
    selection, heldout = protect_corpus(catalog.resolve_corpus(code, settings), ["code"], 4)
    assert {d.label for d in selection + heldout} == {"code"} and len(heldout) == 2
    assert not {d.id for d in selection} & {d.id for d in heldout}
    assert b["n_docs"] == p["heldout_docs"] == 2
    model, tok = load_model("tiny-llama")
    assert b["dense"] == pytest.approx(heldout_perplexity(model, tok, heldout), rel=1e-6)
    assert b["dense"] != b["pruned"] and b["unconstrained"] not in (None, b["pruned"])
    assert p["dense_cached"] is False
    # the dense B evaluation is cached like the dense one: a second protected pruning reuses it
    again = _prune(client, analysis_id, protect=news)["protect"]
    assert again["dense_cached"] is True and again["protected_domain"]["dense"] == b["dense"]
    assert again["protected_domain"]["unconstrained"] is None and again["unconstrained_keep_digest"] is None


def test_pasted_texts_without_held_out_say_so(finished):
    client, analysis_id = finished
    texts = ["def double(x):\n    return 2 * x\n", "for i in range(3):\n    print(i)\n"]
    p = _prune(client, analysis_id, protect={"texts": texts})["protect"]
    assert p["source"] == "2 pasted texts" and p["protect_docs"] == 2 and p["heldout_docs"] == 0
    assert p["protected_domain"] is None and p["calibration_domain"]["n_docs"] == 3
    assert any("no held-out document" in n for n in p["notes"])


def _propose(client, analysis_id, body, status=202):
    response = client.post(f"/api/analyses/{analysis_id}/protect-proposal", json=body)
    assert response.status_code == status, response.text
    job = client.get(f"/api/proposals/{response.json()['id']}").json()  # the app runs jobs inline
    assert job["status"] == "succeeded", job
    return job


def test_networks_proposal_job_and_pruning(finished, settings):
    from backend.app.services import catalog
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.corpus import load_split
    from fnprune.models.loading import load_model
    from fnprune.options import DEFAULT_CALIBRATION_TOKENS
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.protect import protect_corpus, protect_proposal

    client, _ = finished
    # 16 maps of 64 tokens: some |z| > 3 on random weights (the 4 of `finished` have no key neuron)
    analysis_id = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc", "n_texts": 6,
                                                     "max_tokens": 64, "n_components": 16}).json()["id"]
    code = _upload_code(client)
    body = {"corpus": code, "genres": ["other", "code", "code"], "networks": 3, "docs": 6}
    job = _propose(client, analysis_id, body)
    assert job["kind"] == "proposal" and job["progress"] == 1
    assert job["params"] == {"analysis_id": analysis_id, "corpus": code, "genres": ["code", "other"], "texts": None,
                             "networks": 3, "docs": 6}
    proposal = job["result"]
    assert len(proposal["networks"]) <= 3 and proposal["rule"] == "activity"
    assert proposal["n_forced"] == sum(proposal["forced_per_layer"]) > 0
    assert proposal["scores"] == sorted(proposal["scores"], reverse=True)
    assert proposal["calibration_docs"] == 8 and proposal["docs"] == 6

    # the same inputs, directly: the library's protect_proposal on the first 8 calibration documents
    fn = FunctionalNetworks.load(settings.job_dir("analysis", analysis_id) / "run")
    model, tokenizer = load_model("tiny-llama", device="cpu")
    sampling = client.get(f"/api/analyses/{analysis_id}").json()["params"]["sampling"]
    calibration, _ = load_split("pydoc", 8, sampling=sampling)
    docs_b, _ = protect_corpus(catalog.resolve_corpus(code, settings), ["code", "other"], 6)
    direct = protect_proposal(model, tokenizer, fn, Calibration(tokenizer, calibration, DEFAULT_CALIBRATION_TOKENS),
                              docs_b, 3).as_dict()
    assert {k: proposal[k] for k in direct} == direct

    # asked again (genres in another order): the finished job, not a new one (200); another N is another job
    again = _propose(client, analysis_id, body | {"genres": ["code", "other"]}, status=200)
    assert again["id"] == job["id"]
    other = _propose(client, analysis_id, body | {"networks": 2})
    assert other["id"] != job["id"] and other["result"]["networks"] == proposal["networks"][:2]
    assert client.delete(f"/api/proposals/{job['id']}").status_code == 409  # finished: nothing to cancel
    events = client.get(f"/api/proposals/{job['id']}/events")
    assert events.headers["content-type"].startswith("text/event-stream") and '"status": "succeeded"' in events.text

    r = _prune(client, analysis_id, protect={"corpus": "pydoc", "by": "networks", "networks": 3})
    p = r["protect"]
    assert p["by"] == "networks" and p["mixing"] is None
    forced = p["proposal"]
    assert sorted(c["id"] for c in r["chosen_networks"]) == sorted(forced["networks"])
    assert all(c["n_kept"] == c["n_key"] for c in r["chosen_networks"])
    assert forced["n_forced"] == sum(forced["forced_per_layer"]) > 0


@pytest.mark.parametrize("body, status, field", [
    ({"corpus": "pydoc", "genres": ["x"]}, 422, "protect.genres"),
    ({"corpus": "nope"}, 404, "protect.corpus"),
    ({"corpus": "pydoc", "networks": 2048}, 422, "protect.networks"),
    ({"texts": [" "]}, 422, "texts.0"),
    ({"corpus": "pydoc", "texts": ["a"]}, 422, None),
])
def test_bad_proposal_is_refused_before_it_is_queued(finished, body, status, field):
    client, analysis_id = finished
    response = client.post(f"/api/analyses/{analysis_id}/protect-proposal", json=body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert client.app.state.store.list_jobs("proposal") == []  # nothing queued


def test_unfinished_analysis_proposal_is_409(client):
    job = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc", "n_texts": 12}).json()
    r = client.post(f"/api/analyses/{job['id']}/protect-proposal", json={"corpus": "pydoc"})
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert client.get("/api/proposals/nope").status_code == 404
