"""Settings from the environment (prefix ``FNPRUNE_``), validated once; unsafe values fail loudly."""

from __future__ import annotations

import ipaddress
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# every job kind and the folder of data_dir its jobs' files live in
JOB_FOLDERS = {"analysis": "analyses", "pruning": "prunings", "ablation": "ablations", "proposal": "proposals"}


class Settings(BaseSettings):
    """Everything the API and the worker read from the environment.

    ``MODEL_DIRS`` is a list of directories user-given model paths must lie in (JSON list or
    ``os.pathsep``/comma separated); empty means no local model paths are accepted.
    """

    model_config = SettingsConfigDict(env_prefix="FNPRUNE_", extra="ignore", case_sensitive=False)

    # Same default as fnprune.corpus.fnprune_home() (corpora live under it too).
    HOME: Path = Field(default_factory=lambda: Path.home() / ".cache" / "fnprune")
    DATA_DIR: Path | None = None
    REDIS_URL: str | None = None
    TOKEN: str | None = None
    DEVICE: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    MODEL_DIRS: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    TRUST_REMOTE_CODE: bool = False
    MAX_UPLOAD_MB: float = Field(default=20, gt=0, le=2048)
    # A running job whose worker has not written a heartbeat for this long is failed.
    HEARTBEAT_TIMEOUT_S: float = Field(default=60.0, ge=5)
    SSE_POLL_S: float = Field(default=0.5, gt=0, le=10)
    # An event stream ends after this long even if its job is not finished (a client reconnects or polls),
    # so a stuck client or an unattended queue cannot hold a connection forever.
    SSE_MAX_S: float = Field(default=3600.0, gt=0)

    @field_validator("MODEL_DIRS", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                import json

                return json.loads(text)
            parts = [p for chunk in text.split(",") for p in chunk.split(os.pathsep)]
            return [p.strip() for p in parts if p.strip()]
        return value

    @field_validator("REDIS_URL", "TOKEN", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("FNPRUNE_REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @field_validator("TOKEN")
    @classmethod
    def _token_strength(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 8:
            raise ValueError("FNPRUNE_TOKEN must be at least 8 characters long")
        return value

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.HOME = self.HOME.expanduser().resolve()
        self.DATA_DIR = (self.DATA_DIR or self.HOME / "data").expanduser().resolve()
        self.MODEL_DIRS = [Path(d).expanduser().resolve() for d in self.MODEL_DIRS]
        if self.TRUST_REMOTE_CODE:
            warnings.warn("FNPRUNE_TRUST_REMOTE_CODE is on: model repositories may run arbitrary code",
                          stacklevel=2)
        return self

    # -- derived paths -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        assert self.DATA_DIR is not None
        return self.DATA_DIR

    @property
    def queue_path(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def jobs_path(self) -> Path:
        return self.data_dir / "jobs.db"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    def job_dir(self, kind: str, job_id: str) -> Path:
        """Where a job of ``kind`` keeps its files (a kind without a folder in JOB_FOLDERS is a programming error)."""
        return self.data_dir / JOB_FOLDERS[kind] / job_id

    @property
    def queue_kind(self) -> str:
        return "redis" if self.REDIS_URL else "sqlite"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.MAX_UPLOAD_MB * 1024 * 1024)

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.uploads_dir, self.data_dir / "analyses", self.data_dir / "prunings"):
            d.mkdir(parents=True, exist_ok=True)

    def check_bind(self, host: str) -> str | None:
        """A warning when the server would be reachable from other machines without a token."""
        if not is_loopback(host) and not self.TOKEN:
            return (f"binding to {host} without FNPRUNE_TOKEN: anyone on the network can run jobs and read "
                    "files under the model dirs; set FNPRUNE_TOKEN")
        return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
