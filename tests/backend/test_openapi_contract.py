"""The OpenAPI document is a contract: schemathesis, with every check, against `--api-only` on loopback.

No worker runs, so created jobs stay queued (their event streams end after FNPRUNE_SSE_MAX_S). Zero
failures are allowed. One setting widens a check on purpose: a schema-valid request may still be
refused with 400 or 422 when the refusal depends on the server rather than on the JSON (a model path
outside FNPRUNE_MODEL_DIRS, a corpus not installed here, an upload whose content is not text, a target
the analysis cannot reach); those bodies are the documented ``ErrorBody`` and name the field.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from backend_helpers import REPO, worker_env
from test_serve import free_port, wait_healthy

pytestmark = pytest.mark.slow

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2XX", "400", "401", "403", "404", "409", "410", "413", "422", "429"]
"""


def test_schemathesis_finds_no_contract_failure(settings, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = worker_env(settings) | {"FNPRUNE_SSE_MAX_S": "1"}
    log_path = tmp_path / "api.log"
    with open(log_path, "wb") as log:
        api = subprocess.Popen([sys.executable, "-m", "backend.serve", "--api-only", "--host", "127.0.0.1",
                                "--port", str(port), "--log-level", "warning"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        try:
            wait_healthy(base, api, log_path, workers=0)
            schema = httpx.get(f"{base}/openapi.json").json()
            assert "HTTPValidationError" not in schema["components"]["schemas"]
            config = tmp_path / "schemathesis.toml"
            config.write_text(CONFIG)
            run = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
                                  f"{base}/openapi.json", "--checks", "all", "--max-examples", "50", "--seed", "3",
                                  "--workers", "1", "--request-timeout", "20", "--no-color"],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=600)
            summary = run.stdout[-6000:]
            assert run.returncode == 0, summary
            assert " passed" in summary and "failure" not in summary.lower().split("summary")[-1], summary
        finally:
            api.terminate()
            api.wait(timeout=20)
