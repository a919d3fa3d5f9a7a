"""Library results cross the API through explicit models: every key the library returns is declared
(nothing is dropped silently) and every reply holds exactly the declared keys (the schema is true)."""

from __future__ import annotations

from backend.app import schemas
from backend.app.services import analyses


def test_networks_table_rows_are_declared(finished, settings):
    client, job_id = finished
    networks = analyses.load_networks(settings, client.app.state.store, job_id)
    library_keys = set(networks.component_table()[0])
    declared = set(schemas.ComponentRow.model_fields)
    assert library_keys <= declared, f"undeclared keys from the library: {library_keys - declared}"
    rows = client.get(f"/api/analyses/{job_id}/networks").json()["components"]
    assert rows and all(set(row) == declared for row in rows)


def test_component_detail_and_top_tokens_are_declared(finished, settings):
    client, job_id = finished
    networks = analyses.load_networks(settings, client.app.state.store, job_id)
    library_token = networks.component_detail(0)["top_tokens"][0]
    assert set(library_token) <= set(schemas.TopToken.model_fields), set(library_token)
    detail = client.get(f"/api/analyses/{job_id}/networks/0").json()
    assert set(detail) == set(schemas.ComponentDetail.model_fields)
    assert all(set(t) == set(schemas.TopToken.model_fields) for t in detail["top_tokens"])
    assert set(detail["map"]) == set(schemas.MapArray.model_fields)


def test_preview_is_the_declared_plan(finished):
    client, job_id = finished
    preview = client.post(f"/api/analyses/{job_id}/preview", json={"target_ratio": 0.05})
    assert preview.status_code == 200, preview.text
    assert set(preview.json()) == set(schemas.PreviewResult.model_fields)


def test_no_response_model_passes_unknown_keys_through():
    for name in dir(schemas):
        model = getattr(schemas, name)
        if isinstance(model, type) and issubclass(model, schemas.BaseModel):
            assert model.model_config.get("extra") != "allow", f"{name} lets undeclared keys through"


def test_analysis_defaults_are_the_librarys():
    """The API's default number of components is the library's (CLI and CanICA use the same constant)."""
    import argparse
    import inspect

    from backend.app.schemas import AnalysisRequest
    from fnprune.analysis.ica import DEFAULT_N_COMPONENTS, CanICA
    from fnprune.analysis.networks import analyze
    from fnprune.cli.analysis import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    cli = parser.parse_args(["analyze", "--out", "x"]).components
    assert AnalysisRequest.model_fields["n_components"].default == DEFAULT_N_COMPONENTS == cli == 32
    assert CanICA().n_components == inspect.signature(analyze).parameters["n_components"].default == 32


def test_pruning_calibrates_on_at_least_the_clis_default_text():
    """The pruning's calibration is the request's, else the analysis' own but at least 120 x 512 tokens
    (a quick analysis of 15 x 128 tokens must not calibrate the repair on ~2k tokens)."""
    from backend.app.schemas import AnalysisRequest, PruningRequest
    from backend.app.services.prunings import calibration_size

    quick = AnalysisRequest(n_texts=15, max_tokens=128)
    assert calibration_size(PruningRequest(analysis_id="a"), quick) == (120, 512)
    assert calibration_size(PruningRequest(analysis_id="a"), AnalysisRequest(n_texts=200, max_tokens=1024)) == (200, 1024)
    assert calibration_size(PruningRequest(analysis_id="a", calibration_texts=12, calibration_tokens=64), quick) == (12, 64)


def test_pruning_choices_are_the_librarys_and_the_form_copies_none(client):
    """The API's choices and defaults are fnprune's (fnprune.options, the method registry): in the schema,
    in GET /api/options, in the calibration rule; the web form reads them from GET /api/options and holds
    no copy of a method name (the regex test that kept a copy equal is gone with the copy)."""
    from pathlib import Path

    from backend.app.schemas import Options, PruningRequest
    from backend.app.services.prunings import MIN_CALIBRATION
    from fnprune import options
    from fnprune.pruning import methods

    schema = PruningRequest.model_json_schema()["properties"]
    assert schema["method"]["enum"] == list(methods.METHODS) and schema["method"]["default"] == options.DEFAULT_METHOD
    assert schema["repair"]["enum"] == list(options.REPAIRS) and schema["ratio_of"]["enum"] == list(options.RATIO_BASES)
    assert schema["baselines"]["items"]["enum"] == list(methods.BASELINES)
    assert MIN_CALIBRATION == (options.DEFAULT_CALIBRATION_DOCS, options.DEFAULT_CALIBRATION_TOKENS)
    body = client.get("/api/options").json()
    assert set(body) == set(Options.model_fields)
    assert [m["name"] for m in body["methods"]] == list(methods.METHODS)
    assert [m["help"] for m in body["methods"]] == [m.help for m in methods.registered().values()]
    assert {m["name"]: m["refuses"] for m in body["methods"]} == {
        name: dict(m.refuses) for name, m in methods.registered().items()}
    assert [r["name"] for r in body["repairs"]] == list(options.REPAIRS)
    assert body["pruning"]["method"] == options.DEFAULT_METHOD
    assert (body["pruning"]["calibration_texts"], body["pruning"]["calibration_tokens"]) == MIN_CALIBRATION
    assert body["analysis"]["n_components"] == options.DEFAULT_N_COMPONENTS
    assert {p["name"]: p["n_components"] for p in body["presets"]} == {
        "quick": options.QUICK_COMPONENTS, "paper": options.PAPER_COMPONENTS}
    js = Path(__file__).resolve().parents[2] / "frontend" / "js"
    forms = (js / "views" / "prune.js").read_text() + (js / "views" / "new.js").read_text()
    assert not [m for m in methods.METHODS if f'"{m}"' in forms], "a method name is copied into a form"
    built_elsewhere = [p.name for p in js.rglob("*.js") if p.name != "api.js"
                       and any(q + "/api/" in p.read_text() for q in "\"'`")]
    assert not built_elsewhere, f"API URLs are built in api.js (urls), not in {built_elsewhere}"
