"""Backend fixtures: settings in tmp dirs, a TestClient, and a real worker process."""

from __future__ import annotations

import os

import pytest
from backend_helpers import WorkerProcess


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("fnprune-home")
    for key in list(os.environ):
        if key.startswith("FNPRUNE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("FNPRUNE_HOME", str(home))
    monkeypatch.setenv("FNPRUNE_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("FNPRUNE_DEVICE", "cpu")
    from backend.app.core.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path):
    from backend.app.core.config import Settings

    return Settings(HOME=tmp_path / "home", DATA_DIR=tmp_path / "data", DEVICE="cpu", HEARTBEAT_TIMEOUT_S=30,
                    SSE_POLL_S=0.1)


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from backend.app.main import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def worker(settings, tmp_path):
    settings.ensure_dirs()
    proc = WorkerProcess(settings, tmp_path / "worker.log").start()
    yield proc
    proc.stop()


@pytest.fixture
def finished(settings):
    """A client whose app runs jobs inline (no worker process) and a small succeeded analysis: (client, id)."""
    from fastapi.testclient import TestClient

    from backend.app.main import create_app

    with TestClient(create_app(settings, immediate=True)) as client:
        job = client.post("/api/analyses", json={"model": "tiny-llama", "corpus": "pydoc", "n_texts": 12,
                                                 "max_tokens": 64, "n_components": 4}).json()
        assert client.get(f"/api/analyses/{job['id']}").json()["status"] == "succeeded"
        yield client, job["id"]
