"""Concurrent requests on one analysis: downloads of the same artifact, label updates, a slow upload.

The analysis runs inline (huey immediate mode, no worker process); each race is widened with a short
sleep at the point where an unprotected implementation would interleave.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from backend.app.main import create_app
from backend.app.services import analyses


def test_concurrent_downloads_of_one_artifact(finished, settings, monkeypatch):
    client, job_id = finished
    from fnprune import io as fio

    export = fio.export_mask_json

    def slow_export(mask, path, info):  # all writers are inside their temporary file at the same time
        export(mask, path, info)
        time.sleep(0.2)

    monkeypatch.setattr(fio, "export_mask_json", slow_export)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: client.get(f"/api/analyses/{job_id}/download/masks",
                                                       params={"target_ratio": 0.05}), range(6)))
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    bodies = {r.content for r in responses}
    assert len(bodies) == 1 and json.loads(bodies.pop())["format"] == "fnprune-mask-1"
    exports = settings.job_dir("analysis", job_id) / "exports"
    assert not list(exports.glob(".tmp-*"))  # no temporary file left behind


def test_concurrent_label_updates_lose_nothing(finished, settings, monkeypatch):
    client, job_id = finished
    n = len(client.get(f"/api/analyses/{job_id}/networks").json()["components"])
    read = analyses.get_labels

    def slow_read(settings_, job_id_):  # read, then wait: an unlocked writer overwrites the others' changes
        labels = read(settings_, job_id_)
        time.sleep(0.05)
        return labels

    monkeypatch.setattr(analyses, "get_labels", slow_read)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: client.put(f"/api/analyses/{job_id}/labels",
                                                     json={"labels": {str(k): "signal"}}), range(n)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert read(settings, job_id) == {str(k): "signal" for k in range(n)}


def test_upload_parsing_does_not_block_other_requests(client, monkeypatch):
    import fnprune.corpus

    load = fnprune.corpus.load_corpus

    def slow_load(spec, **kwargs):
        time.sleep(1.5)
        return load(spec, **kwargs)

    monkeypatch.setattr(fnprune.corpus, "load_corpus", slow_load)
    upload = threading.Thread(target=client.post, args=("/api/corpora",),
                              kwargs={"files": {"file": ("a.txt", b"one document.\n\nanother one.\n")}})
    upload.start()
    time.sleep(0.3)  # the upload is being parsed now
    started = time.monotonic()
    assert client.get("/api/health").status_code == 200
    waited = time.monotonic() - started
    upload.join()
    assert waited < 0.8, f"a health check waited {waited:.2f} s behind an upload being parsed"


def test_unexpected_errors_do_not_leak_their_text(settings, monkeypatch):
    from backend.app.services import catalog

    def broken():
        raise RuntimeError("secret path /srv/fnprune/private")

    monkeypatch.setattr(catalog, "list_models", broken)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        response = client.get("/api/models")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (details are in the server log)", "field": None}


def test_405_names_every_method_of_the_path(client):
    response = client.request("OPTIONS", "/api/analyses/abc")
    assert response.status_code == 405
    assert {"GET", "DELETE"} <= {m.strip() for m in response.headers["allow"].split(",")}
    assert response.json()["field"] is None
