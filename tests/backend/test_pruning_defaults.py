"""Prunings through the API (jobs run inline): the minimal request works with its defaults, baselines
are compared on the method's MLP budget, and what the server decides for the user is stated."""

from __future__ import annotations


def _pruning(client, body: dict) -> dict:
    response = client.post("/api/prunings", json=body)
    assert response.status_code in (200, 202), response.text
    job = client.get(f"/api/prunings/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    return job


def test_minimal_request_works_with_the_defaults(finished):
    """Default method (obs, its own allocation) and no target: not the analysis' |z| threshold (which obs
    cannot use) but the default target ratio, said in the result."""
    client, analysis_id = finished
    job = _pruning(client, {"analysis_id": analysis_id})
    result = job["result"]
    assert result["method"] == "obs" and result["repair"] == "lstsq"
    assert result["target"] == {"threshold": None, "target_ratio": 0.2, "ratio_of": "all",
                                "source": "default target ratio"}
    assert 0.19 < result["ratio_total"] < 0.21  # (the repair's added down biases count as kept parameters)
    assert any("default target ratio" in n for n in result["notes"])
    # pydoc has fewer calibration documents than the default 120: the number used is stated, not hidden
    calib = result["calibration"]
    assert calib["requested_texts"] == 120 and 0 < calib["texts"] < 120
    assert any(n.startswith(f"calibration: {calib['texts']} documents used of the 120") for n in result["notes"])
    assert result["pruned"]["ppl"] > 0


def test_baselines_get_the_methods_mlp_budget_without_heads(finished):
    client, analysis_id = finished
    job = _pruning(client, {"analysis_id": analysis_id, "target_ratio": 0.1, "heads": 0.5, "baselines": ["magnitude"],
                            "evaluate": False, "calibration_texts": 12, "calibration_tokens": 64})
    result = job["result"]
    assert result["kv_heads"] == [2, 1, 1, 2] and result["head_repair_errors"]["layers"] == [1, 2]
    removed = sum(result["original_widths"]) - sum(result["widths"])
    budget = result["baseline_budget"]
    assert budget["heads"] == "not pruned" and budget["mlp_neurons_removed"] == removed > 0
    assert "no attention head" in budget["description"]
    assert [b["allocation"] for b in result["baselines"]] == ["own", "networks"]
    for b in result["baselines"]:
        assert b["mlp_neurons_removed"] == removed, b  # the same number of MLP neurons
        assert b["ratio_total"] < result["ratio_total"]  # the method also removed heads


def test_uniform_with_protected_layers_is_refused(finished):
    client, analysis_id = finished
    for url, body in [("/api/prunings", {"analysis_id": analysis_id}), (f"/api/analyses/{analysis_id}/preview", {})]:
        response = client.post(url, json={**body, "uniform": True, "protected_layers": [1], "target_ratio": 0.1})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "protected_layers" and "uniform" in response.json()["detail"]
    assert client.get("/api/prunings").json() == []


def test_recovery_is_honoured_and_recorded(finished):
    """`recover_epochs` runs the recovery after the repair (the library's, fnprune.pruning.recover) and the
    result says what it did; the baselines get the same recovery, and say so."""
    client, analysis_id = finished
    job = _pruning(client, {"analysis_id": analysis_id, "target_ratio": 0.1, "recover_epochs": 2, "recover_lr": 0.001,
                            "baselines": ["magnitude"], "evaluate": False, "calibration_texts": 12,
                            "calibration_tokens": 64})
    rec = job["result"]["recovery"]
    assert rec["epochs"] == 2 and rec["lr"] == 0.001 and rec["steps"] == 2 * 3 and rec["documents"] == 12
    assert rec["kl_first"] >= 0 and rec["kl_last"] >= 0 and rec["seconds"] > 0
    assert "same recovery by distillation (2 epoch(s))" in job["result"]["baseline_budget"]["description"]
    assert [b["recover_epochs"] for b in job["result"]["baselines"]] == [2, 2]
    plain = _pruning(client, {"analysis_id": analysis_id, "target_ratio": 0.1, "evaluate": False,
                              "calibration_texts": 12, "calibration_tokens": 64})
    assert plain["result"]["recovery"] is None
    assert plain["result"]["keep_digest"] == job["result"]["keep_digest"]  # recovery never changes the kept neurons
