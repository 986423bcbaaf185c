"""The web application: the API on real and synthetic radiographs, bad inputs with the right status, no
weights said plainly, and one end-to-end run in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import shutil

import cv2
import numpy as np
import pytest
from conftest import REPO

from utils.benchmarking.benchmarks import write_untrained_weights
from utils.data.inputs import find_dicoms
from utils.serving.app import create_app, start_background_server

TINY_MODELS = {
    "study": {"image_size": 64, "seg_weight": 0.5},  # with the auxiliary head: the page's opacity map
    "frcnn": {"image_size": 64, "predict_size": 96, "proposals": 50, "roi_samples": 32, "freeze_bn": False},
    "yolo": {"model": "yolov8n.yaml", "image_size": 64, "predict_size": 96},
    "ensemble": {"workers": 0, "device": "cpu", "batch_size": 4, "amp": "off"},
}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("app_weights")
    write_untrained_weights(out, REPO / "train" / "configs" / "demo.yaml", folds=1, overrides=TINY_MODELS)
    return out


@pytest.fixture(scope="module")
def client(weights):
    from fastapi.testclient import TestClient

    return TestClient(create_app(weights, max_upload_bytes=3 << 20))


def _post(client, name: str, data: bytes, preview: bool = False, opacity_map: bool = False):
    query = "&".join(k for k, on in (("preview=true", preview), ("opacity_map=true", opacity_map)) if on)
    return client.post(f"/api/predict?{query}", files={"file": (name, io.BytesIO(data))})


def _preview(answer) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(answer["preview_png"]), np.uint8), cv2.IMREAD_GRAYSCALE)


def test_health_and_documented_api(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and set(health["models"]) == {"study", "frcnn", "yolo"}
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    assert "Drop a DICOM" in client.get("/").text
    assert health["opacity_map"] is True


def test_the_slider_starts_at_the_manifests_display_threshold(weights, tmp_path):
    """The page sets its slider from /healthz: the calibrated threshold of the manifest, else 0.2."""
    import json
    import shutil

    from fastapi.testclient import TestClient

    assert TestClient(create_app(weights)).get("/healthz").json()["display_threshold"] == 0.2
    calibrated = tmp_path / "weights"
    shutil.copytree(weights, calibrated)
    manifest = json.loads((calibrated / "manifest.json").read_text())
    manifest["ensemble"]["display_threshold"] = 0.61
    (calibrated / "manifest.json").write_text(json.dumps(manifest))
    assert TestClient(create_app(calibrated)).get("/healthz").json()["display_threshold"] == 0.61
    assert "h.display_threshold" in (REPO / "utils" / "serving" / "index.html").read_text()


def test_the_opacity_map_covers_the_image_on_request(client, siim_dataset):
    path = find_dicoms(siim_dataset / "test")[0]
    plain = _post(client, path.name, path.read_bytes()).json()
    assert "opacity_map_png" not in plain
    answer = _post(client, path.name, path.read_bytes(), opacity_map=True).json()
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(answer["opacity_map_png"]), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert heat.shape == (8, 8)  # the 64-px study input at stride 8
    assert answer["study"] == plain["study"]  # asking for the map changes nothing else


@contextlib.contextmanager
def _one_prediction_held(client, monkeypatch):
    """Inside the block, one upload of a small PNG is held inside its prediction (in a thread); after it,
    the upload is released and must have been answered 200."""
    import threading

    from utils.serving import app as app_module

    entered, release = threading.Event(), threading.Event()
    real_payload = app_module.prediction_payload

    def held_payload(*args, **kwargs):
        entered.set()
        assert release.wait(30), "never released"
        return real_payload(*args, **kwargs)

    monkeypatch.setattr(app_module, "prediction_payload", held_payload)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(_post(client, "a.png", _small_png())))
    worker.start()
    try:
        assert entered.wait(30)
        yield
    finally:
        release.set()
        worker.join(60)
    assert answers and answers[0].status_code == 200


def _small_png() -> bytes:
    return cv2.imencode(".png", np.full((64, 64), 128, np.uint8))[1].tobytes()


def test_health_answers_while_a_prediction_runs(weights, monkeypatch):
    """Prediction runs off the event loop: /healthz is served while a prediction is held inside."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(weights))
    with _one_prediction_held(client, monkeypatch):
        assert client.get("/healthz").json()["status"] == "ok"  # answered while the prediction is held


def test_predictions_beyond_the_pending_bound_get_503_at_once(weights, monkeypatch):
    """20 concurrent large uploads added 0.85 GB on main: requests are admitted up to max_pending (each holds
    its upload), one more is answered 503 with Retry-After at once, and its slot is free again after."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(weights, max_pending=1))
    with _one_prediction_held(client, monkeypatch):
        busy = _post(client, "b.png", _small_png())
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy: 1 radiographs are being predicted (at most 1)" in busy.json()["detail"]
    assert _post(client, "c.png", _small_png()).status_code == 200  # the slot was given back


def test_the_apps_own_arguments_are_checked_before_any_model_loads(weights, monkeypatch, capsys):
    """--port 99999 loaded every model and then died in bind() with a traceback on main; --max-upload-mb -5
    was accepted and then refused every upload. Each is one line now, before a model is loaded."""
    import socket

    from infer import app as app_module

    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: pytest.fail("loaded models before the check"))
    for extra, message in [(["--port", "99999"], "argument --port: must be at most 65535, got 99999"),
                           (["--port", "0"], "argument --port: must be at least 1, got 0"),
                           (["--max-upload-mb", "-5"], "argument --max-upload-mb: must be at least 1, got -5"),
                           (["--max-upload-mb", "10000000"], "argument --max-upload-mb: must be at most 1024"),
                           (["--max-pending", "0"], "argument --max-pending: must be at least 1, got 0")]:
        with pytest.raises(SystemExit) as exit_info:
            app_module.main(["--weights-dir", str(weights), *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, extra
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port in use
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"^error: cannot listen on 127.0.0.1:{port}: Address already in use"):
            app_module.main(["--weights-dir", str(weights), "--port", str(port)])


def test_a_synthetic_dicom_gets_what_the_submission_would_say(client, weights, siim_dataset):
    """The app's answer for one DICOM equals that image's rows in a submission of it alone (the file
    predicted by the batch path, the rows by the submission code): boxes in its pixels, scores, none and
    the study's four probabilities."""
    import pandas as pd

    from utils.data.images_to_predict import TestImage
    from utils.data.submission import parse_prediction_string
    from utils.ensemble.assemble import assemble_submission
    from utils.prediction.predictor import Ensemble

    path = find_dicoms(siim_dataset / "test")[0]
    response = _post(client, path.name, path.read_bytes())
    assert response.status_code == 200, response.text
    answer = response.json()
    image = TestImage.from_dicom_path(path)
    ensemble = Ensemble(weights, overrides={"device": "cpu", "workers": 0})  # as the app loads it
    sample = pd.DataFrame({"id": [f"{image.study_id}_study", f"{image.image_id}_image"], "PredictionString": ""})
    rows = assemble_submission(ensemble.predict_paths([image], progress=False), sample, ensemble.config)
    study, boxes = (parse_prediction_string(text) for text in rows["PredictionString"])
    assert answer["study"] == pytest.approx({p.label: p.confidence for p in study}, abs=1e-4)
    assert answer["none"] == pytest.approx(next(p.confidence for p in boxes if p.label == "none"), abs=1e-4)
    opacity = [p for p in boxes if p.label == "opacity"]
    assert len(answer["boxes"]) == len(opacity) > 0
    for mine, theirs in zip(answer["boxes"], opacity):
        assert mine["score"] == pytest.approx(theirs.confidence, abs=1e-4)
        assert [mine[k] for k in ("x_min", "y_min", "x_max", "y_max")] == pytest.approx(theirs.box, abs=0.1)
        assert 0 <= mine["x_min"] < mine["x_max"] <= answer["width"]


def test_real_radiographs_and_the_monochrome1_twin_shown_inverted(client, shared):
    folder = shared("real-xrays")
    for name in ("00000001_000.png", "covid-19-pneumonia-58-prior.jpg"):
        assert _post(client, name, (folder / name).read_bytes()).status_code == 200
    normal = _post(client, "siim.dcm", (folder / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
                   .read_bytes(), preview=True).json()
    twin = _post(client, "mono1.dcm", (folder / "Fake_MONOHR1.dcm").read_bytes(), preview=True).json()
    assert (normal["width"], normal["height"]) == (twin["width"], twin["height"]) == (1024, 1024)
    a, b = _preview(normal).astype(int), _preview(twin).astype(int)
    assert np.abs(a + b - 255).mean() < 2  # same stored pixels, MONOCHROME1: displayed inverted


@pytest.mark.parametrize("name, data, status, message", [
    ("empty.dcm", b"", 400, "empty file"),
    ("notes.txt", b"hello, this is not an image\n" * 10, 422, "not a DICOM, PNG or JPEG"),
    ("huge.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00",
     413, "too large"),
    ("big.dcm", b"\x00" * ((3 << 20) + 10), 413, "larger than the limit"),
    ("sliver.png", cv2.imencode(".png", np.zeros((1, 3000), np.uint8))[1].tobytes(), 413, "implausible image shape"),
    ("needle.png", cv2.imencode(".png", np.zeros((2000, 100), np.uint8))[1].tobytes(), 413, "aspect ratio"),
])
def test_bad_uploads_get_a_clear_4xx(client, name, data, status, message):
    response = _post(client, name, data)
    assert response.status_code == status and message in response.json()["detail"]


def test_a_truncated_dicom_gets_422_naming_the_file(client, siim_dataset):
    data = find_dicoms(siim_dataset / "test")[0].read_bytes()
    response = _post(client, "cut.dcm", data[: len(data) // 3])
    assert response.status_code == 422 and "cut.dcm" in response.json()["detail"]


def test_without_weights_it_says_so(tmp_path):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(None))
    assert client.get("/healthz").json()["status"] == "no_models"
    response = _post(client, "x.png", cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    assert response.status_code == 503 and "--weights-dir" in response.json()["detail"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed (.ci/run installs it)")
def test_the_page_in_a_real_browser(weights, siim_dataset):
    from playwright.sync_api import sync_playwright

    url, server = start_background_server(create_app(weights))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("text=Models loaded")
            assert float(page.input_value("#threshold")) == pytest.approx(0.2)  # the manifest has none calibrated
            page.set_input_files("#file", str(find_dicoms(siim_dataset / "test")[0]))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            page.fill("#threshold", "0")
            page.dispatch_event("#threshold", "input")
            assert page.locator("#study .row").count() == 4 and page.locator("#none .row").count() == 1
            assert page.locator("#boxes li.box").count() > 0  # untrained detectors still propose boxes
            pixels = "() => Array.from(document.getElementById('canvas').getContext('2d')" \
                     ".getImageData(0, 0, 64, 64).data).reduce((a, b) => a + b, 0)"
            before = page.evaluate(pixels)
            page.check("#overlay")  # the opacity map is drawn over the radiograph
            assert page.evaluate(pixels) != before
            (REPO / "runs").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "runs" / "app_screenshot.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True


def test_the_load_check_runs_without_errors(weights, siim_dataset):
    from utils.benchmarking.benchmarks import benchmark_serve

    result = benchmark_serve(weights, requests=6, concurrency=3, image=find_dicoms(siim_dataset / "test")[0])
    assert result["errors"] == 0 and result["median_latency_s"] > 0 and result["requests"] == 6


def test_uploads_stay_in_memory_and_are_bounded_without_a_length(client, siim_dataset, monkeypatch):
    """The body is parsed in memory (starlette's spooling form parser is never used), and a chunked
    upload without Content-Length is cut off at the limit with 413."""
    import starlette.formparsers

    def spooling(*args, **kwargs):
        raise AssertionError("the upload went through the spooling form parser")

    monkeypatch.setattr(starlette.formparsers.MultiPartParser, "__init__", spooling)
    path = find_dicoms(siim_dataset / "test")[0]
    padded = path.read_bytes()
    assert _post(client, path.name, padded).status_code == 200

    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.dcm\r\n\r\n"
        for _ in range(8):
            yield b"\0" * (1 << 20)  # 8 MB against the test app's 3 MB limit

    response = client.post("/api/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]
    assert client.post("/api/predict", content=b"abc", headers={"content-type": "text/plain"}).status_code == 400


@functools.lru_cache(maxsize=1)
def _bomb() -> bytes:
    """A deflated 9,000 x 9,000 16-bit DICOM: 162 MB of pixels in a small upload (built once)."""
    from test_dicom import _deflated_dicom

    return _deflated_dicom(9000, 9000)


def test_a_deflated_dicom_bomb_gets_413(client):
    response = _post(client, "bomb.dcm", _bomb())
    assert response.status_code == 413 and "expands beyond" in response.json()["detail"]


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def test_small_hostile_uploads_on_a_real_server_stay_bounded(weights):
    """Against the app's own command (uvicorn) in a fresh process: thin images with a preview, a deflate
    bomb and an oversize chunked body, three rounds each; every answer is a 413 and that process's peak
    memory grows by little (the thin PNG alone used to take it from 2.2 to 4.7 GB). The process serves
    nothing else, so nothing earlier can have raised its peak already (in the test process, an earlier
    test's bomb hid a 618 MiB growth per bomb under the bound)."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc (Linux) to read the server's peak memory")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(REPO / "infer" / "app.py"), "--weights-dir", str(weights),
                               "--port", str(port), "--max-upload-mb", "3"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sliver = cv2.imencode(".png", np.zeros((1, 3000), np.uint8))[1].tobytes()
    bomb = _bomb()

    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.dcm\r\n\r\n"
        for _ in range(8):
            yield b"\0" * (1 << 20)

    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for _ in range(600):
                try:
                    if http.get("/healthz").json()["status"] == "ok":
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            else:
                raise AssertionError("the server did not start")
            # One ordinary prediction first, so the baseline includes the models' working memory.
            png = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))[1].tobytes()
            assert http.post("/api/predict?preview=true", files={"file": ("a.png", png)}).status_code == 200
            peak_before = _peak_rss_mib(server.pid)
            for _ in range(3):
                for name, data in (("sliver.png", sliver), ("bomb.dcm", bomb)):
                    answer = http.post("/api/predict?preview=true", files={"file": (name, data)})
                    assert answer.status_code == 413, answer.text
                answer = http.post("/api/predict", content=chunks(),
                                   headers={"content-type": "multipart/form-data; boundary=x"})
                assert answer.status_code == 413
                assert http.get("/healthz").json()["status"] == "ok"
            grown_mib = _peak_rss_mib(server.pid) - peak_before
        # 618 MiB when the deflate check held what it inflated (measured 2026-12-01), 2 MiB since.
        assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"
    finally:
        server.terminate()
        server.wait(30)


def _trickle(url: str, stop, answers: list) -> None:
    """A client that declares a 10 kB upload and sends it at about 20 bytes/s until ``stop`` or an answer;
    the status line it got (or "closed") goes to ``answers``."""
    import socket
    from urllib.parse import urlparse

    address = urlparse(url)
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                           b"boundary=x\r\nContent-Length: 10000\r\n\r\n")
        connection.settimeout(0.05)
        while not stop.is_set():
            try:
                connection.sendall(b"-")
                reply = connection.recv(200)
            except TimeoutError:
                continue
            except OSError:
                answers.append("closed")
                return
            answers.append(reply.split(b"\r\n")[0].decode() if reply else "closed")
            return
        answers.append("stopped")


def test_slow_uploads_hold_no_prediction_slot_and_are_cut_off(weights, caplog):
    """Before, a few clients trickling an upload held every prediction slot for as long as they trickled,
    so every real radiograph got 503. Now a slot is taken once the body is here, and a body that arrives
    slower than the minimum rate after its grace gets 408."""
    import threading
    import time

    import httpx

    app = create_app(weights, max_pending=1, body_grace_seconds=2.0, min_body_bytes_per_second=1000)
    url, server = start_background_server(app)
    stop, answers = threading.Event(), []
    tricklers = [threading.Thread(target=_trickle, args=(url, stop, answers)) for _ in range(2)]
    try:
        for trickler in tricklers:
            trickler.start()
        time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=60) as http:  # while both trickle
            answer = http.post("/api/predict", files={"file": ("a.png", _small_png())})
            assert answer.status_code == 200, answer.text
        for trickler in tricklers:
            trickler.join(30)
        assert answers == ["HTTP/1.1 408 Request Timeout"] * 2
    finally:
        stop.set()
        server.should_exit = True


def test_many_tiny_multipart_fields_are_refused_and_a_cut_upload_is_one_log_line(weights, caplog):
    """A body of thousands of tiny fields is refused at the 17th (before: a million were parsed on the
    event loop, /healthz timed out and the process grew by 1.2 GB); a client that goes away mid-upload
    is one line in the log (before: a 60-line traceback)."""
    import logging
    import socket
    import time
    from urllib.parse import urlparse

    import httpx

    from utils.serving.app import MAX_PARTS

    url, server = start_background_server(create_app(weights))
    try:
        fields = b"".join(b"--x\r\nContent-Disposition: form-data; name=f%d\r\n\r\nv\r\n" % k for k in range(5000))
        with httpx.Client(base_url=url, timeout=60) as http:
            answer = http.post("/api/predict", content=fields + b"--x--\r\n",
                               headers={"content-type": "multipart/form-data; boundary=x"})
            assert answer.status_code == 400 and f"more than {MAX_PARTS} multipart fields" in answer.text
            caplog.clear()
            with caplog.at_level(logging.INFO):
                address = urlparse(url)
                with socket.create_connection((address.hostname, address.port)) as connection:
                    connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/"
                                       b"form-data; boundary=x\r\nContent-Length: 5000\r\n\r\n--x\r\n")
                time.sleep(1.0)
                assert http.get("/healthz").json()["status"] == "ok"
        gone = [r for r in caplog.records if "went away during its upload" in r.getMessage()]
        assert len(gone) == 1 and "\n" not in gone[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    finally:
        server.should_exit = True
