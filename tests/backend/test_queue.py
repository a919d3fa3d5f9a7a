"""The queue wiring and failure reasons, with jobs run inline (huey immediate mode, no worker process)."""

import pytest
from fastapi.testclient import TestClient
from huey import RedisHuey, SqliteHuey

from backend.app.main import create_app
from backend.app.worker import get_queue


def test_sqlite_by_default_redis_when_configured(settings):
    huey, task = get_queue(settings)
    assert isinstance(huey, SqliteHuey) and task.name == "fnprune.run_job"
    settings.REDIS_URL = "redis://localhost:6399/0"
    huey, task = get_queue(settings)  # builds the client; connects only when used
    assert isinstance(huey, RedisHuey) and task.name == "fnprune.run_job"


@pytest.fixture
def inline(settings, tmp_path):
    (tmp_path / "models" / "empty").mkdir(parents=True)
    settings.MODEL_DIRS = [(tmp_path / "models").resolve()]
    with TestClient(create_app(settings, immediate=True)) as client:
        yield client


@pytest.mark.parametrize("request_body, reason", [
    ({"model": "{models}/empty"}, "without config.json"),
    ({"model": "tiny-llama", "n_texts": 2, "max_tokens": 16, "n_components": 200}, "n_components"),
])
def test_failed_job_has_a_readable_reason(inline, settings, request_body, reason):
    if "model" in request_body:
        request_body = {**request_body, "model": request_body["model"].format(models=settings.MODEL_DIRS[0])}
    job = inline.post("/api/analyses", json={"corpus": "pydoc", **request_body}).json()
    job = inline.get(f"/api/analyses/{job['id']}").json()
    assert job["status"] == "failed", job
    assert reason in job["error"] and "Traceback" not in job["error"]
    assert job["finished_at"] is not None
    networks = inline.get(f"/api/analyses/{job['id']}/networks")
    assert networks.status_code == 409 and "failed" in networks.json()["detail"]
