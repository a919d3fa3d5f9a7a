"""POST /api/analyses/{id}/ablations: refused before any work with the field named; run through the worker's
service, its numbers are those of a direct fnprune.evaluation.ablation.ablate call on the same documents."""

from __future__ import annotations

import numpy as np
import pytest


def _url(analysis_id: str) -> str:
    return f"/api/analyses/{analysis_id}/ablations"


@pytest.fixture
def finished(settings):
    """Jobs run inline; a succeeded tiny analysis with 16 maps per layer, some of them with key neurons
    (|z| > 3) and some without: (client, id)."""
    from fastapi.testclient import TestClient

    from backend.app.main import create_app

    with TestClient(create_app(settings, immediate=True)) as client:
        job = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc", "n_texts": 12,
                                                 "max_tokens": 64, "n_components": 16}).json()
        assert client.get(f"/api/analyses/{job['id']}").json()["status"] == "succeeded"
        yield client, job["id"]


def test_bad_ablations_are_refused_with_their_field(finished, settings):
    client, analysis_id = finished
    table = client.get(f"/api/analyses/{analysis_id}/networks").json()
    n = len(table["components"])
    keyed = next(c["id"] for c in table["components"] if c["n_key"] > 0)
    cases = [
        ("nope", {"networks": [keyed]}, 404, "analysis_id"),
        (analysis_id, {"networks": [n]}, 422, "networks"),
        (analysis_id, {"networks": [-1]}, 422, "networks"),
        (analysis_id, {"networks": []}, 422, "networks"),
        (analysis_id, {}, 422, "networks"),
        (analysis_id, {"networks": [True]}, 422, "networks.0"),
        (analysis_id, {"networks": [keyed], "texts": 0}, 422, "texts"),
        (analysis_id, {"networks": [keyed], "texts": 201}, 422, "texts"),
        (analysis_id, {"networks": [keyed], "max_tokens": 4}, 422, "max_tokens"),
        (analysis_id, {"networks": [keyed], "top_tokens": -1}, 422, "top_tokens"),
        (analysis_id, {"networks": [keyed], "seed": -1}, 422, "seed"),
        (analysis_id, {"networks": [keyed], "bogus": 1}, 422, "bogus"),
    ]
    for aid, body, status, field in cases:
        r = client.post(_url(aid), json=body)
        assert (r.status_code, r.json()["field"]) == (status, field), (body, r.json())
        assert r.json()["detail"]
    assert client.get("/api/ablations/nope").status_code == 404
    assert client.delete("/api/ablations/nope").status_code == 404
    assert client.get(_url("nope")).status_code == 404
    assert client.get(_url(analysis_id)).json() == []  # nothing was queued


def test_network_without_key_neurons_is_refused(finished):
    """A network with no neuron above the threshold would change nothing: 422 on networks, naming it."""
    client, analysis_id = finished
    table = client.get(f"/api/analyses/{analysis_id}/networks").json()
    empty = [c["id"] for c in table["components"] if c["n_key"] == 0]
    keyed = [c["id"] for c in table["components"] if c["n_key"] > 0]
    assert empty and keyed, table["components"]  # this tiny analysis has both kinds
    r = client.post(_url(analysis_id), json={"networks": [keyed[0], empty[0]]})
    assert r.status_code == 422 and r.json()["field"] == "networks"
    assert r.json()["detail"] == (f"networks: {empty[0]} has no key neurons (|z| > {table['threshold']:g}); zeroing it "
                                  "would change nothing")
    assert client.get(_url(analysis_id)).json() == []


def test_unfinished_analysis_is_409(client):
    job = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc", "n_texts": 12}).json()
    r = client.post(_url(job["id"]), json={"networks": [0]})
    assert r.status_code == 409 and "queued" in r.json()["detail"]


def test_ablation_job_equals_a_direct_ablate_call(finished, settings):
    from backend.app.services.ablations import api_result
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.corpus import analysis_documents, load_split
    from fnprune.evaluation.ablation import ablate
    from fnprune.models.loading import load_model

    client, analysis_id = finished
    table = client.get(f"/api/analyses/{analysis_id}/networks").json()
    chosen = max(table["components"], key=lambda c: (c["n_key"], -c["id"]))
    assert chosen["n_key"] > 0
    body = {"networks": [chosen["id"]], "texts": 4, "max_tokens": 48, "top_tokens": 6, "seed": 3}
    r = client.post(_url(analysis_id), json=body)
    assert r.status_code == 202, r.json()
    job = client.get(f"/api/ablations/{r.json()['id']}").json()  # the app runs jobs inline
    assert job["status"] == "succeeded", job
    assert job["kind"] == "ablation" and job["params"] == {"analysis_id": analysis_id, **body}
    result = job["result"]

    # the same inputs, directly: the analysis' model and networks, the held-out documents it did not read
    analysis = client.get(f"/api/analyses/{analysis_id}").json()["params"]
    docs = load_split("pydoc", analysis["n_texts"], 4)[1]
    assert len(docs) == 4
    assert not {d.id for d in docs} & {d.id for d in analysis_documents("pydoc", analysis["n_texts"])}
    fn = FunctionalNetworks.load(settings.job_dir("analysis", analysis_id) / "run")
    model, tokenizer = load_model("tiny-llama", device="cpu")
    direct = api_result(analysis_id, ablate(model, tokenizer, fn, [chosen["id"]], docs, window=48, seed=3, n_tokens=6))
    assert result == direct
    assert result["n_neurons"] == chosen["n_key"] == sum(result["neurons_per_layer"])
    assert result["threshold"] == table["threshold"]
    assert [g["genre"] for g in result["genres"]] == ["pydoc"] and result["all"]["n_docs"] == 4
    assert len(result["top_tokens"]) == 6
    row = result["all"]
    assert row["network_vs_dense"]["ratio"] == pytest.approx(row["network"] / row["dense"])
    assert row["network_vs_dense"]["low"] <= row["network_vs_dense"]["ratio"] <= row["network_vs_dense"]["high"]
    drops = [t["logp_drop"] for t in result["top_tokens"]]
    assert drops == sorted(drops, reverse=True)
    assert np.allclose([np.log(t["p_dense"]) - np.log(t["p_network"]) for t in result["top_tokens"]], drops)

    # asked again (networks in another order, duplicates): the finished job, not a new one (200)
    again = client.post(_url(analysis_id), json=body | {"networks": [chosen["id"], chosen["id"]]})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    other = client.post(_url(analysis_id), json=body | {"seed": 4})
    assert other.status_code == 202 and other.json()["id"] != job["id"]
    listed = client.get(_url(analysis_id)).json()
    assert [j["id"] for j in listed] == [other.json()["id"], job["id"]]
    assert client.delete(f"/api/ablations/{job['id']}").status_code == 409  # finished: nothing to cancel
