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
    assert client.get("/api/health?token=s3cret-token").status_code == 401  # never a token in a URL
    assert client.get("/").status_code == 200  # the UI itself is public; it asks for the token


def test_signed_download_links(settings, monkeypatch):
    from backend.app.api import deps

    settings.TOKEN = "s3cret-token"
    client = TestClient(create_app(settings))
    auth = {"Authorization": "Bearer s3cret-token"}
    path = "/api/prunings/nope/download/model"
    assert client.post("/api/download-links", json={"path": path}).status_code == 401  # asking needs the token
    link = client.post("/api/download-links", json={"path": path + "?x=1"}, headers=auth).json()
    assert "s3cret" not in link["url"] and link["url"].startswith(path + "?x=1&expires=")
    assert client.get(link["url"]).status_code == 404  # authenticated: the pruning just does not exist
    tampered = link["url"].replace("x=1", "x=2")
    assert client.get(tampered).status_code == 401
    assert client.get(link["url"].replace(path, "/api/prunings/other/download/model")).status_code == 401
    assert client.get(link["url"].replace("/download/model", "")).status_code == 401  # only downloads
    monkeypatch.setattr(deps.time, "time", lambda: link["expires"] + 30)  # later than the link's life
    assert client.get(link["url"]).status_code == 401
    for bad in ("https://evil.example/api/x/download/y", "/api/health", "/etc/passwd"):
        response = client.post("/api/download-links", json={"path": bad}, headers=auth)
        assert response.status_code == 422 and response.json()["field"] == "path"
