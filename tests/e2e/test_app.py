"""End-to-end: drive the real web app (API + worker from ``python -m backend.serve``) in headless
Chromium with the built-in ``tiny-llama`` model and the ``pydoc`` corpus at tiny sizes.

Screenshots of every step go to ``test-artifacts/e2e/``. Run with ``pytest -m e2e tests/e2e``.
Chromium: ``FNPRUNE_CHROMIUM`` (default ``/usr/bin/chromium``); without it Playwright's own.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("FNPRUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ANALYSIS_TIMEOUT_MS = 150_000
VIEWPORT_WIDTH = 1280  # every view must fit: no sideways scrolling
PRUNING_TIMEOUT_MS = 180_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.load(response)


@contextmanager
def _serve(home: Path, *, token: str | None = None, api_only: bool = False):
    """``python -m backend.serve`` on a free port with its data under ``home``; yields the base URL."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "FNPRUNE_TOKEN"}
    env.update(FNPRUNE_HOME=str(home), FNPRUNE_DATA_DIR=str(home / "data"), PYTHONUNBUFFERED="1")
    if token:
        env["FNPRUNE_TOKEN"] = token
    command = [sys.executable, "-m", "backend.serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning"] + (["--api-only"] if api_only else [])
    log_path = home / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get_json(f"{url}/api/health", token)["status"] == "ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # serve stops its worker on the way out
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / f"{home.name}.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server and worker on a free port, with their data in a temporary directory."""
    with _serve(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        kwargs = {"args": CHROMIUM_ARGS}
        if Path(CHROMIUM).is_file():
            kwargs["executable_path"] = CHROMIUM
        b = p.chromium.launch(**kwargs)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": VIEWPORT_WIDTH, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)
    pg = context.new_page()
    pg.page_errors = []
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    yield pg
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def banner_text(page) -> str:
    banner = page.locator("#error-banner")
    return banner.inner_text() if banner.is_visible() else ""


JOB_ERROR = "[data-testid=job-progress] .job-error:not([hidden])"


def wait_for_job(page, done_js: str, what: str, timeout_ms: int) -> None:
    """Wait until `done_js` is true, failing at once with the page's own words if the job fails."""
    page.wait_for_function(
        f"() => ({done_js}) || document.querySelector({JOB_ERROR!r}) !== null", timeout=timeout_ms
    )
    if page.locator(JOB_ERROR).count():
        shot(page, f"failed-{what}")
        pytest.fail(f"the {what} did not succeed; the page says: {page.locator(JOB_ERROR).inner_text()}")


def assert_fits_viewport(page, what: str) -> None:
    """No element makes the page wider than the viewport (no horizontal scroll bar)."""
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    if widths[0] > widths[1]:
        culprits = page.evaluate(
            """() => [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right
                 > window.innerWidth + 1).slice(0, 5).map((e) => e.tagName + '#' + e.id + '.' + e.className)"""
        )
        shot(page, f"too-wide-{what}")
        pytest.fail(f"{what}: the page is {widths[0]} px wide in a {widths[1]} px viewport; {culprits}")


# The value Plotly drew for neuron `neuron` of slice `label`, read at the cell the layout gives it:
# the slice's origin comes from its corner annotation, the cell from GET /layout (positions).
DRAWN_AT = """([plotId, label, cell, cols]) => {
  const gd = document.getElementById(plotId);
  const ann = gd.layout.annotations.find((a) => a.text === label);
  const x = ann.x + 0.5 + (cell % cols), y = ann.y + 0.5 + Math.floor(cell / cols);
  return {z: gd.data[0].z[y][x], custom: gd.data[0].customdata[y][x], x, y};
}"""


# The page coordinates of the centre of mosaic cell (x, y), for hovering it.
# (The cell is scrolled to the middle of the viewport first.)
CELL_PIXEL = """([plotId, x, y]) => {
  const gd = document.getElementById(plotId), fl = gd._fullLayout;
  const top = gd.getBoundingClientRect().top + window.scrollY + fl.yaxis._offset + fl.yaxis.l2p(y);
  window.scrollTo(0, Math.max(0, top - window.innerHeight / 2));
  const r = gd.getBoundingClientRect();
  return [r.left + fl.xaxis._offset + fl.xaxis.l2p(x), r.top + fl.yaxis._offset + fl.yaxis.l2p(y)];
}"""


def _layout(server: str, analysis_id: str, name: str = "atlas"):
    lay = _get_json(f"{server}/api/analyses/{analysis_id}/layout?name={name}")
    shape = lay["positions"]["shape"]
    positions, network = (np.frombuffer(base64.b64decode(lay[k]["data"]), "<u4").reshape(shape)
                          for k in ("positions", "network"))
    return lay, positions, network


def set_range(page, selector: str, value: float) -> None:
    page.locator(selector).evaluate(
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true})); }", value
    )


def test_full_workflow(server, page, tmp_path):
    expect = sync_api.expect

    # 1. New analysis ---------------------------------------------------------------------------
    page.goto(f"{server}/#/new")
    expect(page.locator("#model option[value='tiny-llama']")).to_have_count(1)
    page.select_option("#model", "tiny-llama")
    page.select_option("#corpus", "pydoc")
    page.get_by_role("button", name="Quick demo").click()
    expect(page.locator("#n_components")).to_have_value("16")
    expect(page.locator("#n_texts")).to_have_value("15")
    expect(page.locator("#sampling")).to_have_value("stratified")  # spread over every genre
    assert_fits_viewport(page, "new analysis")
    page.fill("#n_texts", "6")
    page.fill("#max_tokens", "64")
    page.fill("#n_components", "8")
    shot(page, "01-new-analysis")
    page.get_by_role("button", name="Start analysis").click()
    progress = page.get_by_test_id("job-progress")
    expect(progress).to_be_visible()
    expect(progress.get_by_role("progressbar")).to_be_visible()
    shot(page, "02-progress")
    wait_for_job(page, "location.hash.endsWith('/overview')", "analysis", ANALYSIS_TIMEOUT_MS)
    analysis_id = re.search(r"#/analysis/([\w-]+)/", page.url).group(1)
    assert banner_text(page) == ""
    assert _get_json(f"{server}/api/analyses/{analysis_id}")["params"]["sampling"] == "stratified"

    # 2. Overview ------------------------------------------------------------------------------
    page.wait_for_selector("#overview-mosaic .main-svg")
    table = _get_json(f"{server}/api/analyses/{analysis_id}/networks")
    overview = _get_json(f"{server}/api/analyses/{analysis_id}/overview")
    stats = page.locator(".stats").first.inner_text()
    assert f"LAYERS\n{overview['n_layers']}" in stats.upper()
    assert str(overview["width"]) in stats
    expect(page.locator("#overview-mosaic .gtitle")).to_contain_text("|z| ≥")
    expect(page.locator("#layout")).to_have_value("atlas")
    expect(page.locator("#overview-mosaic")).to_have_attribute("data-layout", "atlas")
    lay, positions, network = _layout(server, analysis_id)
    assert lay["grid"] == overview["grid"] and positions.shape == (overview["n_layers"], overview["width"])
    for layer in range(overview["n_layers"]):  # every neuron in its own cell of the layer's grid
        assert sorted(positions[layer].tolist()) == list(range(overview["width"]))
    n_comp_check = {c["id"] for c in table["components"]}
    assert set(network.ravel().tolist()) - {0} <= {i + 1 for i in n_comp_check}
    page.get_by_label("max |z|").check()
    expect(page.locator("#overview-mosaic .gtitle")).to_contain_text("Max |z|")
    max_z = np.frombuffer(base64.b64decode(overview["max_z"]["data"]), np.uint8).reshape(
        positions.shape) * overview["max_z"]["scale"]
    layer, neuron = (int(i) for i in np.unravel_index(int(max_z.argmax()), max_z.shape))
    assert (positions != np.arange(positions.shape[1])).any()     # the atlas is not the index order
    cols = overview["grid"][1]
    drawn = page.evaluate(DRAWN_AT, ["overview-mosaic", f"L{layer}", int(positions[layer, neuron]), cols])
    assert abs(drawn["z"] - max_z[layer, neuron]) < 1e-4 and drawn["custom"][1:3] == [neuron, layer], drawn
    # hovering a neuron names its region (the atlas network, by name)
    page.mouse.move(*page.evaluate(CELL_PIXEL, ["overview-mosaic", drawn["x"], drawn["y"]]))
    hover = page.locator("#overview-mosaic .hoverlayer .hovertext")
    expect(hover).to_contain_text(f"neuron {neuron}")
    owner = int(network[layer, neuron]) - 1
    names = {c["id"]: c["name"] for c in table["components"]}
    expect(hover).to_contain_text(f"network {owner}" if owner >= 0 else "background")
    if owner >= 0:
        expect(hover).to_contain_text(names[owner])
    assert_fits_viewport(page, "overview")
    # the index layout puts neuron j at cell j
    page.select_option("#layout", "index")
    expect(page.locator("#overview-mosaic")).to_have_attribute("data-layout", "index")
    drawn = page.evaluate(DRAWN_AT, ["overview-mosaic", f"L{layer}", int(neuron), cols])
    assert abs(drawn["z"] - max_z[layer, neuron]) < 1e-4 and drawn["custom"][1:3] == [neuron, layer], drawn
    page.select_option("#layout", "atlas")
    expect(page.locator("#overview-mosaic")).to_have_attribute("data-layout", "atlas")
    # Hover a neuron of the first slice: the tooltip names layer and neuron.
    box = page.locator("#overview-mosaic .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + 6, box["y"] + 6)
    expect(page.locator("#overview-mosaic .hoverlayer .hovertext")).to_contain_text("neuron")
    page.get_by_label("max |z|").check()
    expect(page.locator("#overview-mosaic .gtitle")).to_contain_text("Max |z|")
    # Which networks is a neuron in? (a random tiny model may have no neuron above the threshold)
    key = _a_key_neuron(overview)
    layer, neuron = key or (overview["n_layers"] - 1, 0)
    page.fill("#probe-layer", str(layer))
    page.fill("#probe-neuron", str(neuron))
    page.get_by_role("button", name="Find its networks").click()
    if key:
        expect(page.locator("#neuron-networks h3")).to_contain_text(f"Layer {layer}, neuron {neuron}: key in")
        expect(page.locator("#neuron-networks li").first).to_contain_text("Network")
    else:
        expect(page.locator("#neuron-networks h3")).to_have_text(
            f"Layer {layer}, neuron {neuron}: in no network at |z| ≥ {overview['threshold']:.1f}"
        )
    shot(page, "03-overview")

    # 3. Gallery ---------------------------------------------------------------------------------
    page.get_by_role("link", name="Network gallery").click()
    page.wait_for_selector("#gallery[data-complete=true]")
    n = len(table["components"])
    expect(page.get_by_test_id("network-card")).to_have_count(n)
    expect(page.locator("[data-testid=network-card][data-drawn=true]")).to_have_count(n)
    expect(page.locator("#gallery-count")).to_contain_text(f"{n} of {n} networks shown")
    expect(page.locator("[data-testid=network-card][data-layout=atlas]")).to_have_count(n)
    for c in table["components"]:
        assert c["name"] and c["name"] == c["auto_name"]      # automatic names from the top tokens
    card0 = page.locator(f"[data-testid=network-card][data-id='{table['components'][0]['id']}']")
    expect(card0.locator(".net-name")).to_have_text(f"“{table['components'][0]['name']}”")
    assert_fits_viewport(page, "gallery")
    page.select_option("#sort", "stability")
    first_card = page.get_by_test_id("network-card").first
    first_id = int(first_card.get_attribute("data-id"))
    best = max(table["components"], key=lambda c: (c["stability"], -c["id"]))
    assert first_id == best["id"]
    first_card.locator("select.label-select").select_option("signal")
    expect(page.locator("#notice")).to_contain_text(f"Network {first_id} labelled signal")
    labels = {
        c["id"]: c["label"] for c in _get_json(f"{server}/api/analyses/{analysis_id}/networks")["components"]
    }
    assert labels[first_id] == "signal"
    page.fill("#map-threshold", "2")
    page.locator("#map-threshold").dispatch_event("change")
    expect(page.locator("#gallery-count")).to_contain_text("maps at |z| > 2.0")
    expect(page.locator("#gallery")).to_have_attribute("data-complete", "true")
    shot(page, "04-gallery")
    page.select_option("#filter-label", "signal")
    expect(page.get_by_test_id("network-card")).to_have_count(1)
    expect(page.locator("#gallery-more")).to_be_hidden()

    # 4. Network detail --------------------------------------------------------------------------
    first_card.locator("h3 a").click()
    page.wait_for_url(re.compile(rf"#/analysis/{analysis_id}/network/{first_id}$"))
    page.wait_for_selector("#network-mosaic .main-svg")
    expect(page.locator("#network-title")).to_have_text(f"Network {first_id}")
    expect(page.locator("select.label-select")).to_have_value("signal")
    expect(page.locator("#network-name")).to_have_value(names[first_id])
    expect(page.locator("#network-mosaic")).to_have_attribute("data-layout", "atlas")
    detail = _get_json(f"{server}/api/analyses/{analysis_id}/networks/{first_id}")
    zmap = np.frombuffer(base64.b64decode(detail["map"]["data"]), np.int8).reshape(
        detail["map"]["shape"]) * detail["map"]["scale"]
    map_layer = detail["map"]["layers"][0]
    neuron = int(np.abs(zmap[0, 0]).argmax())                   # the strongest "act" neuron of the first slice
    set_range(page, "#z-threshold", 0)                          # draw every value (a random model's are small)
    expect(page.locator("#network-mosaic .gtitle")).to_contain_text("|z| ≥ 0.0")
    drawn = page.evaluate(DRAWN_AT, ["network-mosaic", f"L{map_layer} act", int(positions[map_layer, neuron]), cols])
    assert abs(drawn["z"] - zmap[0, 0, neuron]) < 1e-3 and drawn["custom"][1] == neuron, (drawn, zmap[0, 0, neuron])
    page.fill("#network-name", "my test network")
    page.locator("#network-name").dispatch_event("change")
    expect(page.locator("#notice")).to_contain_text(f"Network {first_id} named “my test network”")
    renamed = _get_json(f"{server}/api/analyses/{analysis_id}/networks")["components"]
    assert next(c for c in renamed if c["id"] == first_id)["name"] == "my test network"
    # exports: the FIX labels carry label and name; the NIfTI maps can be laid out as the atlas
    with urllib.request.urlopen(f"{server}/api/analyses/{analysis_id}/download/labels", timeout=30) as response:
        assert f"{first_id + 1}, Signal, my test network, False" in response.read().decode().splitlines()
    _check_nifti_layouts(server, analysis_id, positions, tmp_path)
    set_range(page, "#z-threshold", 1.5)
    expect(page.locator("#network-mosaic .gtitle")).to_contain_text("|z| ≥ 1.5")
    expect(page.locator("#z-threshold-out")).to_have_text("|z| ≥ 1.5")
    page.wait_for_selector("#time-course .main-svg")
    page.wait_for_selector("#histogram .main-svg")
    expect(page.locator("#top-tokens li mark").first).to_be_visible()
    assert_fits_viewport(page, "network detail")
    shot(page, "05-network-detail")

    # 5. Select and preview --------------------------------------------------------------------
    page.get_by_role("link", name="Select & prune").click()
    # No network is chosen by default: nothing is forced (a check keeps every key neuron of a network).
    expect(page.locator("#selected-count")).to_have_text(f"0 of {n} networks selected")
    # The default is a target ratio: 20 % of ALL parameters (a |z| threshold is the expert option).
    expect(page.locator("#target-ratio")).to_be_checked()
    expect(page.locator("#ratio-slider")).to_have_value("0.2")
    expect(page.locator("label[for=target-ratio]")).to_contain_text("fraction removed")
    expect(page.locator("#ratio-of")).to_have_value("all")
    expect(page.locator("#ratio-of option:checked")).to_contain_text("of ALL parameters")
    expect(page.locator("output[for=ratio-slider]")).to_have_text("20 % of all parameters")
    expect(page.locator("#pv-ratio")).to_have_text(re.compile(r"^(19|20|21)\.\d %$"), timeout=30_000)
    assert_fits_viewport(page, "select")
    page.get_by_label("target pruning ratio").check()
    set_range(page, "#ratio-slider", 0.1)
    expect(page.locator("#preview-state")).to_contain_text("Preview with no network chosen", timeout=30_000)
    page.wait_for_selector("#width-plot .main-svg")
    expect(page.get_by_role("alert")).to_be_hidden()
    preview = page.request.post(
        f"{server}/api/analyses/{analysis_id}/preview",
        data={
            "networks": None,
            "threshold": None,
            "target_ratio": 0.1,
            "protected_layers": None,
            "uniform": False,
        },
    ).json()
    expect(page.locator("#pv-ratio-mlp")).to_have_text(f"{100 * preview['ratio_mlp']:.1f} %")
    expect(page.locator("#pv-ratio")).to_have_text(f"{100 * preview['ratio_total']:.1f} %")
    page.fill("#top-n", "2")
    page.locator("#select-top").click()
    expect(page.locator("#selected-count")).to_have_text(f"2 of {n} networks selected")
    # Two networks may not reach the target on a tiny model: then the page must say why.
    expect(page.locator("#preview-state")).to_have_text(re.compile(r"Preview for 2 chosen networks|Preview refused"))
    if "refused" in page.locator("#preview-state").inner_text():
        expect(page.get_by_role("alert")).to_contain_text("Preview: ")
        shot(page, "06a-preview-error")
    page.get_by_role("button", name="None (nothing forced)").click()
    expect(page.locator("#preview-state")).to_contain_text("Preview with no network chosen")
    expect(page.get_by_role("alert")).to_be_hidden()
    page.get_by_role("checkbox", name="random").check()
    shot(page, "06-select-preview")

    # 6. Prune and compare ---------------------------------------------------------------------
    page.get_by_role("button", name="Prune the model").click()
    page.wait_for_url(re.compile(r"#/pruning/[\w-]+$"))
    pruning_id = page.url.rsplit("/", 1)[1]
    progress = page.get_by_test_id("job-progress")
    expect(progress.locator(".badge")).to_have_text("running", timeout=60_000)
    expect(progress.locator(".stage")).not_to_have_text("Connecting…")
    shot(page, "07-pruning-progress")
    wait_for_job(page, "document.querySelector('#compare-table') !== null", "pruning", PRUNING_TIMEOUT_MS)
    page.wait_for_selector("#ppl-plot .main-svg")
    result = _get_json(f"{server}/api/prunings/{pruning_id}")["result"]
    expect(page.locator("#dense-ppl")).to_have_text(f"{result['dense']['ppl']:.2f}")
    expect(page.locator("#pruned-ppl")).to_have_text(f"{result['pruned']['ppl']:.2f}")
    expect(page.locator("#ratio-total")).to_have_text(f"{100 * result['ratio_total']:.1f} %")
    expect(page.locator("#baselines-table")).to_contain_text("random")
    expect(page.locator("#load-snippet")).to_contain_text("from_pretrained")
    assert_fits_viewport(page, "results")
    shot(page, "08-results")

    # 7. Downloads -----------------------------------------------------------------------------
    with page.expect_download() as info:
        page.get_by_role("button", name="Kept neurons (JSON)").click()
    masks = json.loads(Path(info.value.path()).read_text())
    assert masks
    with page.expect_download() as info:
        page.get_by_role("button", name="Pruned model (zip)").click()
    model_zip = tmp_path / "model.zip"
    info.value.save_as(model_zip)
    with zipfile.ZipFile(model_zip) as zf:
        names = zf.namelist()
    assert any(name.endswith("config.json") for name in names), names
    with page.expect_download() as info:
        page.get_by_role("button", name="Labels (FIX)").click()
    assert f"{first_id + 1}, Signal, my test network, False" in Path(info.value.path()).read_text().splitlines()
    with page.expect_download() as info:
        page.get_by_role("button", name="Maps (NIfTI)").click()
    assert Path(info.value.path()).read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert banner_text(page) == ""
    shot(page, "09-downloads")
    assert page.page_errors == []


def _check_nifti_layouts(server: str, analysis_id: str, positions, tmp_path: Path) -> None:
    """maps.nii.gz in the atlas layout holds neuron j of layer z at the atlas cell of j, index at cell j."""
    import nibabel as nib

    volumes = {}
    for name in ("index", "atlas"):
        path = tmp_path / f"maps-{name}.nii.gz"
        with urllib.request.urlopen(f"{server}/api/analyses/{analysis_id}/download/maps?layout={name}",
                                    timeout=60) as response:
            path.write_bytes(response.read())
        volumes[name] = np.asarray(nib.load(path).get_fdata())        # (x = col, y = row, z = layer, t)
    cols = volumes["index"].shape[0]
    width = positions.shape[1]
    for layer in range(positions.shape[0]):
        by_index = volumes["index"][np.arange(width) % cols, np.arange(width) // cols, layer]
        cell = positions[layer]
        np.testing.assert_array_equal(volumes["atlas"][cell % cols, cell // cols, layer], by_index)


def _a_key_neuron(overview) -> tuple[int, int] | None:
    density = base64.b64decode(overview["density"]["data"])
    width = overview["width"]
    for i, count in enumerate(density):
        if count:
            return i // width, i % width
    return None


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("empty.txt", b"", "empty"),
        ("binary.txt", bytes(range(256)) * 4, "binary"),
    ],
)
def test_upload_error_is_shown(server, page, name, content, words):
    page.goto(f"{server}/#/new")
    page.wait_for_selector("#upload")
    page.set_input_files("#upload", files=[{"name": name, "mimeType": "text/plain", "buffer": content}])
    banner = page.get_by_role("alert")
    sync_api.expect(banner).to_be_visible()
    sync_api.expect(banner).to_contain_text("Upload failed")
    sync_api.expect(banner).to_contain_text(words)
    assert "{" not in banner.inner_text()  # words, not JSON
    shot(page, f"10-upload-error-{name.split('.')[0]}")
    page.get_by_role("button", name="Dismiss error").click()
    sync_api.expect(banner).to_be_hidden()


def test_missing_analysis_is_reported(server, page):
    page.goto(f"{server}/#/analysis/doesnotexist/overview")
    banner = page.get_by_role("alert")
    sync_api.expect(banner).to_be_visible()
    assert "doesnotexist" in banner.inner_text() or "no analysis" in banner.inner_text().lower()
    shot(page, "11-missing-analysis")


def test_cancel_analysis(server, page):
    page.goto(f"{server}/#/new")
    page.select_option("#model", "tiny-llama")
    page.select_option("#corpus", "pydoc")
    page.get_by_role("button", name="Paper").click()  # 40 texts x 512 tokens: long enough to cancel
    page.fill("#n_runs", "5")
    page.get_by_role("button", name="Start analysis").click()
    progress = page.get_by_test_id("job-progress")
    expect = sync_api.expect
    expect(progress).to_be_visible()
    progress.get_by_role("button", name="Cancel").click()
    expect(progress).to_contain_text("Cancelled.", timeout=60_000)
    expect(progress.locator(".badge")).to_have_text("cancelled")
    expect(page.get_by_role("alert")).to_be_hidden()
    shot(page, "12-cancelled")


def test_token_is_asked_for_and_sent(tmp_path, page):
    token = "e2e-secret-token"
    with _serve(tmp_path, token=token, api_only=True) as url:
        page.goto(f"{url}/#/new")
        banner = page.get_by_role("alert")
        sync_api.expect(banner).to_contain_text("Token button")
        page.get_by_role("button", name="Token").click()
        page.fill("#token-input", token)
        page.get_by_role("button", name="Save").click()
        sync_api.expect(page.locator("#model option[value='tiny-llama']")).to_have_count(1)
        sync_api.expect(banner).to_be_hidden()
        sync_api.expect(page.locator("#server-info")).to_contain_text("no worker running")
        shot(page, "13-token")


# -- select & prune: chosen networks are constraints; the result's fidelity and repair ----------------
def _api(server: str, path: str, body=None, method: str | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server}{path}", data=data, method=method or ("POST" if data else "GET"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _wait_succeeded(server: str, kind: str, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        _, job = _api(server, f"/api/{kind}/{job_id}")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job
            return job
        assert time.monotonic() < deadline, f"{kind} {job_id} still {job['status']}"
        time.sleep(1)


@pytest.fixture(scope="module")
def pruned(server):
    """A tiny analysis (through the API, with a seed check against 2 other seeds) and one pruning of
    it that keeps one network, evaluated, with a random baseline: ``(analysis_id, table, chosen id,
    pruning job)``."""
    status, job = _api(server, "/api/analyses", {"model": "tiny-llama", "corpus": "pydoc", "n_texts": 6,
                                                 "max_tokens": 64, "n_components": 16, "check_seeds": 2})
    assert status == 202, job
    analysis_id = _wait_succeeded(server, "analyses", job["id"], ANALYSIS_TIMEOUT_MS / 1000)["id"]
    _, table = _api(server, f"/api/analyses/{analysis_id}/networks")
    chosen = max(table["components"], key=lambda c: (c["n_key"], -c["id"]))["id"]  # 16 maps of 64: some |z| > 3
    status, pj = _api(server, "/api/prunings", {"analysis_id": analysis_id, "networks": [chosen], "target_ratio": 0.2,
                                                "baselines": ["random"], "n_heldout": 3})
    assert status == 202, pj
    return analysis_id, table, chosen, _wait_succeeded(server, "prunings", pj["id"], PRUNING_TIMEOUT_MS / 1000)


def test_select_networks_are_constraints(server, page, pruned):
    expect = sync_api.expect
    analysis_id, table, chosen, earlier = pruned
    n = len(table["components"])
    previews, prunings = [], []
    page.on("request", lambda r: previews.append(r.post_data_json) if r.url.endswith("/preview") else None)

    def capture(route):
        prunings.append(route.request.post_data_json)
        route.fulfill(status=503, content_type="application/json", body='{"detail": "test: not started"}')

    page.route("**/api/prunings", lambda route: capture(route) if route.request.method == "POST" else route.continue_())
    page.goto(f"{server}/#/analysis/{analysis_id}/prune")
    # default: nothing checked, nothing forced, the preview and the pruning get networks = null
    expect(page.locator("#selected-count")).to_have_text(f"0 of {n} networks selected")
    expect(page.locator("#preview-state")).to_contain_text("Preview with no network chosen", timeout=30_000)
    expect(page.locator("#pv-forced")).to_have_text("none")
    assert previews and previews[-1]["networks"] is None
    expect(page.locator("#network-checklist input:checked")).to_have_count(0)
    expect(page.locator("#keep-hint")).to_contain_text("keeps every key neuron")
    # the measured impact of the earlier pruning of this analysis, as a reference for the choice
    r = earlier["result"]
    expect(page.locator(f"#past-prunings li[data-id='{earlier['id']}'] .measured")).to_have_text(
        f" · {r['method']} + {r['repair']}, {100 * r['ratio_total']:.1f}% of all parameters removed: held-out PPL "
        f"{r['pruned']['ppl']:.2f} ({r['pruned']['ppl'] / r['dense']['ppl']:.2f}× dense {r['dense']['ppl']:.2f})")
    _, free = _api(server, f"/api/analyses/{analysis_id}/preview", {"target_ratio": 0.2})
    expect(page.locator("#max-ratio")).to_contain_text(f"at most {100 * free['max_ratio_total']:.1f} %")
    expect(page.locator("#opt-repair")).to_have_value("lstsq")
    expect(page.locator("#opt-method option")).to_have_count(8)
    expect(page.locator("#opt-method")).to_have_value("obs")
    # sequential calibration is a mode of the least-squares repair: the form disables it with another repair
    expect(page.locator("#opt-sequential")).to_be_enabled()
    page.locator("#opt-repair").select_option("none")
    expect(page.locator("#opt-sequential")).to_be_disabled()
    page.locator("#opt-repair").select_option("lstsq")
    expect(page.locator("#opt-sequential")).to_be_enabled()
    # after a quick analysis (6 texts) the calibration field proposes 40 documents and says why; the API's own
    # default (at least 120) is what a request without the field gets
    expect(page.locator("#opt-calib-docs")).to_have_value("40")
    expect(page.locator("#calib-help")).to_contain_text("quick analysis (6 texts)")
    # recovery by distillation: off unless asked for; the field's number is what the request sends
    expect(page.locator("#opt-recover-epochs")).to_have_value("0")
    expect(page.locator("#recover-help")).to_contain_text("0 = off")
    page.locator("#opt-recover-epochs").fill("2")
    assert_fits_viewport(page, "select (no constraint)")
    page.get_by_role("button", name="Prune the model").click()
    expect(page.get_by_role("alert")).to_contain_text("test: not started")
    assert prunings[-1]["networks"] is None and prunings[-1]["repair"] == "lstsq" and "bias" not in prunings[-1]
    assert prunings[-1]["sequential"] is False and prunings[-1]["method"] == "obs"
    assert prunings[-1]["calibration_texts"] == 40
    assert prunings[-1]["recover_epochs"] == 2
    page.locator("#opt-recover-epochs").fill("0")

    # one network checked: every one of its key neurons is forced in, per network and per layer
    _, one = _api(server, f"/api/analyses/{analysis_id}/preview", {"networks": [chosen], "target_ratio": 0.2})
    kept = one["chosen_networks"][0]
    assert kept["n_kept"] == kept["n_key"]
    page.locator(f"#keep-{chosen}").check()
    expect(page.locator(f"#chosen-kept li[data-id='{chosen}']")).to_have_text(
        f"Network {chosen} (L{kept['layer']}): key neurons kept: {kept['n_key']} of {kept['n_key']}")
    expect(page.locator(f"#kept-{chosen}")).to_have_text(f"{kept['n_key']} of {kept['n_key']}")
    expect(page.locator("#pv-forced")).to_have_text(str(sum(one["forced_per_layer"])))
    expect(page.locator("#max-ratio")).to_contain_text(f"at most {100 * one['max_ratio_total']:.1f} %")
    assert sum(one["forced_per_layer"]) == kept["n_key"] > 0, (one, table["components"])
    page.wait_for_function("() => document.getElementById('width-plot').data?.[3]?.visible === true")
    forced = page.evaluate("() => document.getElementById('width-plot').data[3].y")
    assert forced == one["forced_per_layer"]
    assert previews[-1]["networks"] == [chosen]

    # every network at a ratio beyond what they allow: refused before pruning, with the reason
    _, every = _api(server, f"/api/analyses/{analysis_id}/preview", {"networks": [c["id"] for c in table["components"]],
                                                                     "target_ratio": 0.05})
    too_much = round(min(0.9, every["max_ratio_total"] + 0.03), 2)
    assert too_much > every["max_ratio_total"]
    page.get_by_role("button", name="All", exact=True).click()
    set_range(page, "#ratio-slider", too_much)
    expect(page.locator("#prune-blocked")).to_contain_text("too much", timeout=30_000)
    expect(page.locator("#start-pruning")).to_be_disabled()
    expect(page.locator("#prune-blocked")).to_contain_text(f"at most {100 * every['max_ratio_total']:.1f}%")
    set_range(page, "#ratio-slider", 0.05)
    expect(page.locator("#start-pruning")).to_be_enabled(timeout=30_000)
    expect(page.locator("#prune-blocked")).to_be_hidden()
    assert_fits_viewport(page, "select (constrained)")
    shot(page, "10-select-constraints")

    # guided selection: the N networks most selective for a genre; the networks named with a word or
    # active on it (the word among the texts of their 30 most active tokens)
    comps = table["components"]
    genre = comps[0]["top_genre"]
    best = sorted((c for c in comps if c["top_genre"] == genre), key=lambda c: (-c["genre_selectivity"], c["id"]))[:3]
    page.fill("#top-n", "3")
    page.select_option("#genre-pick", genre)
    page.locator("#select-genre").click()
    expect(page.locator("#selected-count")).to_have_text(f"3 of {n} networks selected")
    checked = page.eval_on_selector_all("#network-checklist input:checked", "els => els.map((e) => Number(e.value))")
    assert sorted(checked) == sorted(c["id"] for c in best)
    word = next(w for c in comps for w in re.findall(r"[a-z]+", c["name"].lower()))
    named = {c["id"] for c in comps if re.search(rf"(^|[\W_]){word}($|[\W_])", c["name"].lower())
             or word in c["top_words"]}
    assert all(len(c["top_words"]) >= len(c["auto_name"].split(" · ")) for c in comps)
    page.fill("#word-pick", word)
    page.locator("#select-word").click()
    expect(page.locator("#selected-count")).to_have_text(f"{len(named)} of {n} networks selected")
    checked = page.eval_on_selector_all("#network-checklist input:checked", "els => els.map((e) => Number(e.value))")
    assert set(checked) == named
    expect(page.locator("#guided-note")).to_contain_text(f"named with “{word}” or active on it")
    assert page.page_errors == []


def test_pruning_result_fidelity(server, page, pruned):
    expect = sync_api.expect
    _, _, chosen, job = pruned
    r = job["result"]
    page.goto(f"{server}/#/pruning/{job['id']}")
    expect(page.locator("#fidelity-table tbody tr")).to_have_count(len(r["fidelity"]), timeout=30_000)
    assert r["fidelity_scope"] == "chosen" and [f["id"] for f in r["fidelity"]] == [chosen]
    expect(page.locator("#fidelity-caption")).to_contain_text("the chosen networks")
    for f in r["fidelity"]:
        row = page.locator(f"#fidelity-table tr[data-id='{f['id']}']")
        corr = "—" if f["correlation"] is None else f"{f['correlation']:.3f}"
        expect(row.locator(".fid-corr")).to_have_text(corr)
        expect(row.locator(".fid-top")).to_have_text(f"{100 * f['output_change_top']:.1f} %")
        expect(row.locator(".fid-all")).to_have_text(f"{100 * f['output_change_all']:.1f} %")
        expect(row.locator(".fid-kept")).to_have_text(f"{f['n_key_kept']} of {f['n_key']}")
    page.wait_for_selector("#fidelity-plot .main-svg")
    drawn = page.evaluate("() => document.getElementById('fidelity-plot').data.map((t) => t.y)")
    assert drawn[0] == [f["correlation"] for f in r["fidelity"]]
    assert drawn[1] == [f["output_change_top"] for f in r["fidelity"]]
    c = r["chosen_networks"][0]
    expect(page.locator(f"#chosen-networks li[data-id='{chosen}']")).to_contain_text(
        f"key neurons kept: {c['n_kept']} of {c['n_key']}")
    rc, errs = r["repair_comparison"], r["repair_errors"]
    expect(page.locator("#ppl-repaired")).to_have_text(f"{rc['repaired_ppl']:.2f}")
    expect(page.locator("#ppl-unrepaired")).to_have_text(f"{rc['unrepaired_ppl']:.2f}")
    expect(page.locator("#err-pruned")).to_have_text(f"{100 * errs['error_pruned']:.1f} %")
    expect(page.locator("#err-repaired")).to_have_text(f"{100 * errs['error_repaired']:.1f} %")
    for b in r["baselines"]:
        expect(page.locator(f"#baselines-table tr[data-name='{b['name']}'] td").first).to_have_text(b["name"])
    assert {b["name"] for b in r["baselines"]} == {"random (own)", "random (networks)"}
    for box in page.locator(".gen-text").all():
        assert box.bounding_box()["height"] < 260
    assert_fits_viewport(page, "pruning result")
    shot(page, "11-pruning-fidelity")
    # an empty (or blank) pruned generation is one short line, not a tall empty box
    blank = json.loads(json.dumps(job))
    assert blank["result"]["generations"]
    for g, text in zip(blank["result"]["generations"], ["", "\n\n\n\n\n\n", "   "], strict=False):
        g["pruned"] = text
    page.route(f"**/api/prunings/{job['id']}", lambda route: route.fulfill(json=blank))
    page.reload()
    expect(page.locator(".gen-text.gen-empty")).to_have_count(min(3, len(blank["result"]["generations"])))
    expect(page.locator(".gen-text.gen-empty").first).to_have_text("(nothing generated)")
    for box in page.locator(".gen-text.gen-empty").all():
        assert box.bounding_box()["height"] < 60
    assert page.page_errors == []


def test_overview_key_source(server, page, pruned):
    """The overview colours neurons by why they are key (a stable network or only the unresolved-subspace
    energy), its hover and the neuron lookup say why, and the legend explains the unresolved energy."""
    expect = sync_api.expect
    analysis_id = pruned[0]
    overview = _get_json(f"{server}/api/analyses/{analysis_id}/overview")
    shape = (overview["n_layers"], overview["width"])
    source = np.frombuffer(base64.b64decode(overview["key_source"]["data"]), np.uint8).reshape(shape)
    assert [r["n_key"] for r in overview["key_sources"]] == [int((source[r["layer"]] > 0).sum())
                                                            for r in overview["key_sources"]]
    _, positions, _ = _layout(server, analysis_id)
    page.goto(f"{server}/#/analysis/{analysis_id}/overview")
    page.wait_for_selector("#overview-mosaic .main-svg")
    expect(page.locator("#key-source-legend")).to_be_hidden()
    page.get_by_label("key source").check()
    expect(page.locator("#overview-mosaic")).to_have_attribute("data-measure", "source")
    expect(page.locator("#overview-mosaic .gtitle")).to_contain_text("Why each neuron is key")
    expect(page.locator("#key-source-legend")).to_be_visible()
    expect(page.locator("#key-source-legend")).to_contain_text("Unresolved-subspace energy")
    expect(page.locator("#key-source-split")).to_have_text(
        f"{int((source == 1).sum()):,} / {int((source == 2).sum()):,}")
    expect(page.locator("#n-key-neurons")).to_contain_text(f"{int((source > 0).sum()):,} (")  # what masks keep
    # a neuron of the rarest source present (the unresolved energy when there is one)
    value = 2 if (source == 2).any() else 1 if (source == 1).any() else 0
    layer, neuron = (int(i) for i in np.argwhere(source == value)[0])
    cols = overview["grid"][1]
    drawn = page.evaluate(DRAWN_AT, ["overview-mosaic", f"L{layer}", int(positions[layer, neuron]), cols])
    assert drawn["z"] == value and drawn["custom"][1:3] == [neuron, layer], drawn
    words = {0: "not key", 1: "a stable network", 2: "only the unresolved-subspace energy"}[value]
    page.mouse.move(*page.evaluate(CELL_PIXEL, ["overview-mosaic", drawn["x"], drawn["y"]]))
    expect(page.locator("#overview-mosaic .hoverlayer .hovertext")).to_contain_text(words)
    page.fill("#probe-layer", str(layer))
    page.fill("#probe-neuron", str(neuron))
    page.get_by_role("button", name="Find its networks").click()
    expect(page.locator("#neuron-key-source")).to_contain_text(words)
    page.locator("#key-source-layers summary").click()
    expect(page.locator("#key-source-layers tbody tr")).to_have_count(len(overview["key_sources"]))
    assert_fits_viewport(page, "overview (key source)")
    shot(page, "03b-overview-key-source")
    assert page.page_errors == []


def test_seed_check_is_shown_per_network(server, page, pruned):
    """The gallery card and the network page say in how many of the other seeds each network came back."""
    expect = sync_api.expect
    analysis_id, table, _, _ = pruned
    assert table["check_seeds"] == 2 and all(c["reproduced"] in (0, 1, 2) for c in table["components"])
    page.goto(f"{server}/#/analysis/{analysis_id}/gallery")
    page.wait_for_selector("#gallery[data-complete=true]", state="attached")
    for c in table["components"][:4]:
        card = page.locator(f"[data-testid=network-card][data-id='{c['id']}']")
        expect(card.locator(".reproduced")).to_have_text(f"seeds {c['reproduced']}/2")
    c = table["components"][0]
    page.goto(f"{server}/#/analysis/{analysis_id}/network/{c['id']}")
    expect(page.locator("#net-seeds")).to_have_text(f"back in {c['reproduced']} of 2 seeds")
    assert page.page_errors == []


# -- keep this working: protect a text while pruning (issue 22) --------------------------------------------
PASTED = [f"def f{i}(x):\n    return x * {i} + {i % 3}  # scale {i}\n" for i in range(12)]


def test_protect_a_text_while_pruning(server, page, pruned):
    """The prune page's "Keep this working": pasted texts, the networks proposal as the API gives it, then a
    pruning by calibration mixing with the unconstrained comparison; the result page's protected-domain numbers
    are the API's."""
    expect = sync_api.expect
    analysis_id = pruned[0]
    page.goto(f"{server}/#/analysis/{analysis_id}/prune")
    expect(page.locator("#protect-body")).to_be_hidden()
    page.locator("#protect-on").check()
    page.locator("#protect-src-texts").check()
    page.fill("#protect-texts", "\n\n".join(PASTED))
    expect(page.locator("#protect-by-calibration")).to_be_checked()
    expect(page.locator("label[for='protect-by-calibration'], #protect .checks label").first).to_contain_text(
        "by calibration mixing (recommended, measured in BENCHMARKS §10)")
    expect(page.locator("#protect-by-help")).to_contain_text("0.650 [0.616, 0.686]")  # BENCHMARKS.md §10, verbatim
    expect(page.locator("#protect-networks-row")).to_be_hidden()
    # by networks: the proposal the API makes for the same text, with its forced-neuron budget
    page.locator("#protect-by-networks").check()
    page.fill("#protect-n", "3")
    page.locator("#protect-propose").click()
    expect(page.locator("#protect-proposal")).to_contain_text("key neurons forced", timeout=60_000)
    # the page followed a job; the same request asked again is that finished job (200), not a new one
    status, job = _api(server, f"/api/analyses/{analysis_id}/protect-proposal",
                       {"texts": [t.strip() for t in PASTED], "networks": 3})
    assert status == 200 and job["kind"] == "proposal" and job["status"] == "succeeded", job
    expect(page.locator("#protect-proposal")).to_have_attribute("data-job", job["id"])
    proposal = job["result"]
    expect(page.locator("#protect-proposal")).to_contain_text(
        f"Networks {', '.join(map(str, proposal['networks']))}: {proposal['n_forced']:,} key neurons forced")
    # by calibration mixing, with the unconstrained pruning for comparison
    page.locator("#protect-by-calibration").check()
    page.locator("#protect-compare").check()
    set_range(page, "#ratio-slider", 0.2)
    expect(page.locator("#start-pruning")).to_be_enabled(timeout=30_000)
    page.get_by_role("button", name="Prune the model").click()
    page.wait_for_url(re.compile(r".*#/pruning/[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    wait_for_job(page, "document.getElementById('protect-table') !== null", "protected pruning", PRUNING_TIMEOUT_MS)
    job = _wait_succeeded(server, "prunings", job_id, 10)
    assert job["params"]["protect"]["texts"] == [t.strip() for t in PASTED]
    assert job["params"]["protect"]["by"] == "calibration" and job["params"]["protect"]["compare_unconstrained"]
    p = job["result"]["protect"]
    assert p["source"] == "12 pasted texts" and p["heldout_docs"] == 2 and p["protect_docs"] == 10
    b, a = p["protected_domain"], p["calibration_domain"]
    assert None not in (b["dense"], b["pruned"], b["unconstrained"])
    for key, d in (("b", b), ("a", a)):
        expect(page.locator(f"#protect-{key}-docs")).to_have_text(str(d["n_docs"]))
        expect(page.locator(f"#protect-{key}-dense")).to_have_text(f"{d['dense']:.2f}")
        expect(page.locator(f"#protect-{key}-pruned")).to_have_text(f"{d['pruned']:.2f}")
        expect(page.locator(f"#protect-{key}-unconstrained")).to_have_text(f"{d['unconstrained']:.2f}")
    assert a["pruned"] == job["result"]["pruned"]["ppl"] and a["dense"] == job["result"]["dense"]["ppl"]
    mix = p["mixing"]
    expect(page.locator("#protect-how")).to_contain_text(
        f"+ {mix['protect_docs']} of 12 pasted texts ({mix['protect_tokens']:,} of {mix['tokens']:,} tokens)")
    calib = job["result"]["calibration"]
    assert calib["protected_texts"] == mix["protect_docs"] and calib["texts"] == mix["calibration_docs"] + mix[
        "protect_docs"]
    expect(page.locator("#calibration")).to_contain_text(
        f"calibrated on {calib['texts']} documents ({mix['calibration_docs']} of the calibration corpus, "
        f"{mix['protect_docs']} of the protected text)")
    assert_fits_viewport(page, "pruning result (protect)")
    shot(page, "12-protect-result")


# -- what does this network do? (the network page's ablation panel) ---------------------------------
def _fmt_prob(p: float) -> str:
    """views/ablation.js fmtProb: 4 decimals, below 0.001 JS's toExponential(1) (e.g. 1.2e-5)."""
    return f"{p:.4f}" if p >= 0.001 else re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{p:.1e}")


def _fmt_ratio(r: dict) -> str:
    return f"{r['ratio']:.3f}× [{r['low']:.3f}, {r['high']:.3f}]"


def test_network_ablation_panel(server, page, pruned):
    """"Ablate this network" starts the job on the analysis' model; the panel's label says what is zeroed, and its
    per-genre table, chart and token list show exactly the numbers the API returned."""
    expect = sync_api.expect
    analysis_id, table, chosen, _ = pruned
    comp = next(c for c in table["components"] if c["id"] == chosen)
    assert comp["n_key"] > 0
    page.goto(f"{server}/#/analysis/{analysis_id}/network/{chosen}")
    expect(page.locator("#ablation-what")).to_have_text(
        f"Zeroes the {comp['n_key']:,} key neurons (|z| > {table['threshold']:.2f}) of this network in the dense model; "
        f"control: {comp['n_key']:,} random neurons in the same layers. Nothing is removed or saved. Scored on held-out "
        "documents of the analysis' corpus (ones it did not read).", timeout=30_000)
    page.get_by_role("button", name="Ablate this network").click()
    expect(page.locator("#ablation-table")).to_be_visible(timeout=PRUNING_TIMEOUT_MS)
    _, jobs = _api(server, f"/api/analyses/{analysis_id}/ablations")
    assert len(jobs) == 1, jobs
    job = _wait_succeeded(server, "ablations", jobs[0]["id"], 60)
    assert job["params"] == {"analysis_id": analysis_id, "networks": [chosen], "texts": 20, "max_tokens": 512,
                             "top_tokens": 10, "seed": 0}
    r = job["result"]
    assert r["n_neurons"] == comp["n_key"] and r["threshold"] == table["threshold"] and r["all"]["n_docs"] > 0
    layers = ", ".join(f"layer {lay}: {n}" for lay, n in enumerate(r["neurons_per_layer"]) if n)
    expect(page.locator("#ablation-what")).to_have_text(
        f"Zeroes the {r['n_neurons']:,} key neurons (|z| > {r['threshold']:.2f}) of this network in the dense model "
        f"({layers}); control: {r['n_neurons']:,} random neurons in the same layers. Nothing is removed or saved. "
        f"Scored on {r['all']['n_docs']} held-out documents of the analysis' corpus (ones it did not read), the first "
        f"{r['window']} tokens of each; random seed {r['seed']}.")
    rows = r["genres"] + [r["all"]]
    expect(page.locator("#ablation-table tbody tr")).to_have_count(len(rows))
    for g in rows:
        row = page.locator(f"#ablation-table tr[data-genre='{g['genre']}']")
        expect(row.locator(".abl-docs")).to_have_text(str(g["n_docs"]))
        expect(row.locator(".abl-dense")).to_have_text(f"{g['dense']:.2f}")
        expect(row.locator(".abl-network")).to_have_text(f"{g['network']:.2f}")
        expect(row.locator(".abl-network-ratio")).to_have_text(_fmt_ratio(g["network_vs_dense"]))
        expect(row.locator(".abl-random")).to_have_text(f"{g['random']:.2f}")
        expect(row.locator(".abl-random-ratio")).to_have_text(_fmt_ratio(g["random_vs_dense"]))
    expect(page.locator("#ablation-summary")).to_contain_text(_fmt_ratio(r["all"]["network_vs_random"]))
    page.wait_for_selector("#ablation-plot .main-svg")
    drawn = page.evaluate("() => document.getElementById('ablation-plot').data.map((t) => [t.name, t.y])")
    assert drawn == [["this network zeroed / dense", [g["network_vs_dense"]["ratio"] for g in rows]],
                     ["random neurons zeroed / dense", [g["random_vs_dense"]["ratio"] for g in rows]]]
    items = page.locator("#ablation-tokens li")
    expect(items).to_have_count(len(r["top_tokens"]))
    assert len(r["top_tokens"]) == 10
    for i, t in enumerate(r["top_tokens"]):
        expect(items.nth(i).locator(".abl-p")).to_have_text(f"p {_fmt_prob(t['p_dense'])} → {_fmt_prob(t['p_network'])}")
        expect(items.nth(i).locator(".abl-control")).to_have_text(f"control {_fmt_prob(t['p_random'])} · {t['label']} · "
                                                                  f"{t['doc']}")
    assert_fits_viewport(page, "network (ablation)")
    shot(page, "05b-network-ablation")
    # the page shown again: the finished ablation of this network is there without a click; asked again, the
    # API answers with the same job (200)
    page.reload()
    expect(page.locator("#ablation-table tbody tr")).to_have_count(len(rows))
    status, again = _api(server, f"/api/analyses/{analysis_id}/ablations", {"networks": [chosen]})
    assert status == 200 and again["id"] == job["id"]
    assert page.page_errors == []
