"""Every bad request gets a readable 4xx in the one error shape, and the server keeps serving."""

import pytest

BAD_REQUESTS = [
    # (method, url, kwargs, status, field)
    ("post", "/api/analyses", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, None),
    ("post", "/api/analyses", {"json": {"n_texts": 0}}, 422, "n_texts"),
    ("post", "/api/analyses", {"json": {"n_texts": "many"}}, 422, "n_texts"),
    ("post", "/api/analyses", {"json": {"mode": "bogus"}}, 422, "mode"),
    ("post", "/api/analyses", {"json": {"model": "tiny-llama", "foo": 1}}, 422, "foo"),
    ("post", "/api/analyses", {"json": {"model": "../../etc/passwd"}}, 422, "model"),  # the schema: no relative path
    ("post", "/api/analyses", {"json": {"model": "models/x.gguf"}}, 422, "model"),
    ("post", "/api/analyses", {"json": {"model": "nosuchmodel"}}, 404, "model"),
    ("post", "/api/analyses", {"json": {"model": "/etc"}}, 400, "model"),
    ("post", "/api/analyses", {"json": {"model": ""}}, 422, "model"),
    ("post", "/api/analyses", {"json": {"model": "tiny-llama", "corpus": "nope"}}, 404, "corpus"),
    ("post", "/api/analyses", {"json": {"model": "tiny-llama", "corpus": "../secret.txt"}}, 422, "corpus"),
    ("post", "/api/analyses", {"json": {"model": "tiny-llama", "corpus": "upload:000000000000"}}, 404, "corpus"),
    ("post", "/api/analyses", {"json": {"model": "tiny-llama", "corpus": "pydoc", "genres": ["news"]}}, 422, "genres"),
    ("post", "/api/analyses", {"json": {"n_components": -1}}, 422, "n_components"),
    ("post", "/api/analyses", {"json": {"seed": -5}}, 422, "seed"),
    ("post", "/api/analyses", {"json": {"check_seeds": 11}}, 422, "check_seeds"),
    ("post", "/api/analyses", {"json": {"check_seeds": 2, "mode": "whole-model"}}, 422, "check_seeds"),
    ("post", "/api/analyses", {"json": [1, 2]}, 422, None),
    ("get", "/api/analyses/doesnotexist", {}, 404, None),
    ("delete", "/api/analyses/doesnotexist", {}, 404, None),
    ("get", "/api/analyses/doesnotexist/networks", {}, 404, None),
    ("get", "/api/analyses/doesnotexist/networks/abc", {}, 422, "k"),
    ("get", "/api/analyses/doesnotexist/download/..%2F..%2Fjobs.db", {}, 404, None),
    ("get", "/api/analyses/doesnotexist/download/maps", {}, 404, None),
    ("get", "/api/analyses/doesnotexist/overview?threshold=-1", {}, 422, "threshold"),
    ("post", "/api/analyses/doesnotexist/preview", {"json": {"threshold": 3, "target_ratio": 0.2}}, 422, None),
    ("post", "/api/analyses/doesnotexist/preview", {"json": {"target_ratio": 1.5}}, 422, "target_ratio"),
    ("put", "/api/analyses/doesnotexist/labels", {"json": {"labels": {"0": "maybe"}}}, 422, "labels.0"),
    ("post", "/api/prunings", {"json": {}}, 422, "analysis_id"),
    ("post", "/api/prunings", {"json": {"analysis_id": "nope"}}, 404, "analysis_id"),
    ("post", "/api/prunings", {"json": {"analysis_id": "a/../b"}}, 422, "analysis_id"),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "baselines": ["sparsegpt"]}}, 422, "baselines.0"),
    ("get", "/api/prunings/nope", {}, 404, None),
    ("get", "/api/prunings/nope/download/model", {}, 404, None),
    ("get", "/api/prunings/nope/download/gguf", {}, 404, None),
    ("get", "/api/prunings/nope/download/gguf?type=q4_k", {}, 422, "type"),
    ("get", "/api/prunings/nope/events", {}, 404, None),
    ("post", "/api/corpora", {}, 422, "file"),
    ("post", "/api/corpora", {"files": {"file": ("x.txt", b"\x00\x01\x02binary" * 10)}}, 422, "file"),
    ("post", "/api/corpora", {"files": {"file": ("x.txt", b"")}}, 422, "file"),
    ("post", "/api/corpora", {"files": {"file": ("x.txt", b"   \n\n  ")}}, 422, "file"),
    ("post", "/api/corpora", {"files": {"file": ("x.exe", b"MZ text")}}, 422, "file"),
    ("post", "/api/corpora", {"files": {"file": ("x.jsonl", b'{"nottext": 1}\n')}}, 422, "file"),
    ("post", "/api/corpora", {"files": {"file": ("x.txt", b"\xff\xfe\xfa latin junk")}}, 422, "file"),
    ("post", "/api/analyses", {"json": {"seed": True}}, 422, "seed"),
    ("post", "/api/analyses", {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 422, None),
    ("get", "/api/analyses/doesnotexist/events", {}, 404, None),
    ("get", "/api/analyses/doesnotexist/maps?threshold=1", {}, 422, "threshold"),
    ("get", "/api/analyses/doesnotexist/layout?name=spiral", {}, 422, "name"),
    ("get", "/api/analyses/doesnotexist/labels", {}, 404, None),
    ("delete", "/api/prunings/nope", {}, 404, None),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "networks": [False]}}, 422, "networks.0"),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "recover_epochs": -1}}, 422, "recover_epochs"),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "recover_epochs": 21}}, 422, "recover_epochs"),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "recover_epochs": True}}, 422, "recover_epochs"),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "recover_lr": 0}}, 422, "recover_lr"),
    ("post", "/api/download-links", {"json": {"path": "/api/health"}}, 422, "path"),
    ("patch", "/api/analyses", {}, 405, None),
    ("get", "/api/analyses/doesnotexist/preview", {}, 405, None),  # not the static UI's 404
    ("get", "/api/nope", {}, 404, None),
    ("post", "/api/analyses/doesnotexist/protect-proposal", {"json": {"texts": [" "]}}, 422, "texts.0"),
    ("post", "/api/analyses/doesnotexist/protect-proposal", {"json": {"corpus": "pydoc"}}, 404, None),
    ("post", "/api/analyses/doesnotexist/protect-proposal", {"json": {"corpus": "pydoc", "docs": 0}}, 422, "docs"),
    ("get", "/api/proposals/nope", {}, 404, None),
    ("delete", "/api/proposals/nope", {}, 404, None),
    ("get", "/api/proposals/nope/events", {}, 404, None),
    ("post", "/api/analyses/doesnotexist/ablations", {"json": {"networks": [0]}}, 404, "analysis_id"),
    ("post", "/api/analyses/doesnotexist/ablations", {"json": {"networks": []}}, 422, "networks"),
    ("post", "/api/analyses/doesnotexist/ablations", {"json": {"networks": [0], "texts": 0}}, 422, "texts"),
    ("get", "/api/analyses/doesnotexist/ablations", {}, 404, None),
    ("get", "/api/ablations/nope", {}, 404, None),
    ("delete", "/api/ablations/nope", {}, 404, None),
    ("get", "/api/ablations/nope/events", {}, 404, None),
    ("post", "/api/prunings", {"json": {"analysis_id": "x", "protect": {"corpus": "pydoc", "texts": ["a"]}}}, 422,
     "protect"),
]


@pytest.mark.parametrize("method, url, kwargs, status, field", BAD_REQUESTS,
                         ids=[f"{m} {u} {s}" for m, u, _, s, _f in BAD_REQUESTS])
def test_bad_request_is_readable(client, method, url, kwargs, status, field):
    response = client.request(method.upper(), url, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "field"}
    assert isinstance(body["detail"], str) and len(body["detail"]) > 5 and "Traceback" not in body["detail"]
    if field is not None:
        assert body["field"] == field, body
    assert client.get("/api/health").status_code == 200


def test_every_route_with_input_has_a_bad_request_case(client):
    """A new route that takes parameters or a body must come with a case above (the list is not just long)."""
    import re

    uncovered = []
    for template, operations in client.app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        for method, operation in operations.items():
            if not (operation.get("parameters") or operation.get("requestBody")):
                continue
            if not any(m == method and re.fullmatch(pattern, url.split("?")[0]) for m, url, *_ in BAD_REQUESTS):
                uncovered.append(f"{method.upper()} {template}")
    assert not uncovered, uncovered


def test_oversized_upload_is_413(client, settings):
    settings.MAX_UPLOAD_MB = 0.01
    big = b"word " * 5000  # 25 kB > 10 kB
    response = client.post("/api/corpora", files={"file": ("big.txt", big)})
    assert response.status_code == 413 and response.json()["field"] == "file"
    assert not list(settings.uploads_dir.glob("*"))  # nothing left behind


def test_model_paths_only_inside_model_dirs(client, settings, tmp_path):
    allowed = tmp_path / "models"
    (allowed / "m").mkdir(parents=True)
    settings.MODEL_DIRS = [allowed.resolve()]
    outside = client.post("/api/analyses", json={"model": str(tmp_path / "other")})
    assert outside.status_code == 400 and "outside" in outside.json()["detail"]
    sneaky = client.post("/api/analyses", json={"model": str(allowed / ".." / "other")})
    assert sneaky.status_code == 400
    missing = client.post("/api/analyses", json={"model": str(allowed / "missing")})
    assert missing.status_code == 404
    ok = client.post("/api/analyses", json={"model": str(allowed / "m"), "corpus": "pydoc"})
    assert ok.status_code == 202


def test_cancel_queued_then_409(client):
    job = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc"}).json()
    assert job["status"] == "queued"
    early = client.post("/api/prunings", json={"analysis_id": job["id"], "target_ratio": 0.1})
    assert early.status_code == 409 and "queued" in early.json()["detail"]
    cancelled = client.delete(f"/api/analyses/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.delete(f"/api/analyses/{job['id']}")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert client.get(f"/api/analyses/{job['id']}/networks").status_code == 409
    events = client.get(f"/api/analyses/{job['id']}/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    assert '"status": "cancelled"' in events.text


def test_uploads(client):
    txt = client.post("/api/corpora", files={"file": ("notes.txt", "First document here.\n\nSecond one, longer.\n")})
    assert txt.status_code == 201, txt.text
    assert txt.json()["n_documents"] == 2 and txt.json()["name"].startswith("upload:")
    jsonl = client.post("/api/corpora", files={"file": ("d.jsonl", '{"text": "a b c", "label": "x"}\n'
                                                                    '{"text": "d e f", "label": "y"}\n')})
    assert jsonl.status_code == 201 and jsonl.json()["labels"] == ["x", "y"]
    names = [c["name"] for c in client.get("/api/corpora").json()]
    assert txt.json()["name"] in names and jsonl.json()["name"] in names
    bad_genre = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": jsonl.json()["name"],
                                                   "genres": ["z"]})
    assert bad_genre.status_code == 422 and bad_genre.json()["field"] == "genres"
    ok = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": jsonl.json()["name"], "genres": ["x"]})
    assert ok.status_code == 202


def test_catalogue(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["queue"] == "sqlite" and health["device"] == "cpu"
    assert "tiny-llama" in [m["name"] for m in client.get("/api/models").json()]
    assert "pydoc" in [c["name"] for c in client.get("/api/corpora").json()]
    assert client.get("/").status_code == 200
    assert client.get("/vendor/plotly.min.js").status_code == 200
    assert client.get("/docs").status_code == 200
