from fastapi.testclient import TestClient

from backend.app.main import create_app


def test_token_required_everywhere_under_api(settings):
    settings.TOKEN = "s3cret-token"
    client = TestClient(create_app(settings))
    for url in ("/api/health", "/api/analyses", "/api/models", "/api/prunings/x"):
        missing = client.get(url)
        assert missing.status_code == 401 and missing.json()["detail"].startswith("authentication required")
        assert missing.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/health", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/api/health?token=s3cret-token").status_code == 200  # EventSource, download links
    assert client.get("/").status_code == 200  # the UI itself is public; it asks for the token
