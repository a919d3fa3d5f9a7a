import pytest
from pydantic import ValidationError

from backend.app.core.config import Settings, get_settings, is_loopback


def test_env_prefix_and_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("FNPRUNE_DATA_DIR")
    monkeypatch.setenv("FNPRUNE_HOME", str(tmp_path))
    monkeypatch.setenv("FNPRUNE_MODEL_DIRS", f"{tmp_path}/a,{tmp_path}/b")
    monkeypatch.setenv("FNPRUNE_MAX_UPLOAD_MB", "5")
    get_settings.cache_clear()
    s = get_settings()
    assert s.data_dir == tmp_path.resolve() / "data"
    assert s.MODEL_DIRS == [tmp_path.resolve() / "a", tmp_path.resolve() / "b"]
    assert s.max_upload_bytes == 5 * 2**20
    assert s.queue_kind == "sqlite" and s.TRUST_REMOTE_CODE is False and s.TOKEN is None


def test_redis_url_selects_redis_queue(monkeypatch):
    monkeypatch.setenv("FNPRUNE_REDIS_URL", "redis://localhost:6379/0")
    assert Settings().queue_kind == "redis"


@pytest.mark.parametrize("key, value", [("FNPRUNE_TOKEN", "short"), ("FNPRUNE_REDIS_URL", "http://x"),
                                        ("FNPRUNE_MAX_UPLOAD_MB", "0"), ("FNPRUNE_DEVICE", "tpu"),
                                        ("FNPRUNE_TRUST_REMOTE_CODE", "maybe")])
def test_unsafe_values_fail_loudly(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_trust_remote_code_warns(monkeypatch):
    monkeypatch.setenv("FNPRUNE_TRUST_REMOTE_CODE", "true")
    with pytest.warns(UserWarning, match="arbitrary code"):
        Settings()


def test_public_bind_without_token_warns(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert Settings().check_bind("127.0.0.1") is None
    assert "FNPRUNE_TOKEN" in Settings().check_bind("0.0.0.0")
    assert Settings(TOKEN="a-long-secret").check_bind("0.0.0.0") is None


def test_serve_help_runs():
    from backend import serve

    with pytest.raises(SystemExit) as exc:
        serve.main(["--help"])
    assert exc.value.code == 0


def test_serve_refuses_bad_settings(monkeypatch, capsys):
    from backend import serve

    monkeypatch.setenv("FNPRUNE_TOKEN", "short")
    assert serve.main(["--api-only"]) == 2
    assert "FNPRUNE_TOKEN" in capsys.readouterr().err
