"""`landmark serve`: the HTTP API, over real loopback HTTP against a real uvicorn process and a real exported run.

The same decision as `landmark tag`, the tagged JPEG read back by exiftool, every bad request a 4xx with one line
of JSON (schemathesis fuzzes the service's own OpenAPI description for 5xx), a load of 10 clients, a full queue
answered 503 with Retry-After, the API key, and a re-export picked up only if its signature checks.
"""
import concurrent.futures
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from landmark_core.export.exporter import export_run
from landmark_core.core.fileio import read_json
from landmark_core.tagging.predict import Predictor
from landmark_core.tagging.decision import decide_for
from landmark_core.tagging.report import report_rows
from landmark_core.tagging.batch import tag_files
from helpers import free_port
from helpers import landmark, one_line_error
from helpers import exiftool

EVERYTHING = "threshold=0&tag_unfamiliar=true"  # the tiny model is sure of nothing: tag anyway, to check the tags


@contextlib.contextmanager
def service(run: Path, *flags: str, env: dict | None = None):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "landmark_core", "serve", str(run), "--port", str(port), *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/health", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 with a key): it is up
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    pytest.fail("the service did not start: " + process.stdout.read().decode()[-2000:])
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def call(url: str, path: str, data: bytes | None = None, content_type: str = "image/jpeg", headers=None,
         timeout: float = 60) -> tuple[int, object, bytes]:
    request = urllib.request.Request(url + path, data=data, method="POST" if data is not None else "GET",
                                     headers={**({"Content-Type": content_type} if data is not None else {}),
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()  # names in any case
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def multipart(data: bytes, field: str = "file", name: str = "photo.jpg") -> tuple[bytes, str]:
    boundary = "landmarkboundary42"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def shared_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the shared finished run, for the service the read-only tests of this module share."""
    import shutil
    return shutil.copytree(trained_run, tmp_path_factory.mktemp("served") / "artifacts" / "runs" / trained_run.name)


@pytest.fixture(scope="module")
def photos(shared_run) -> list[Path]:
    return [Path(p["path"]) for p in read_json(shared_run / "predictions.json")][:8]


@pytest.fixture(scope="module")
def served(shared_run):
    """One service for the tests that only ask it questions (starting one is seconds of imports)."""
    with service(shared_run) as url:
        yield url, shared_run


@pytest.fixture()
def served_alone(finished_copy):
    """A service of its own, on a run the test may change."""
    with service(finished_copy) as url:
        yield url, finished_copy


def test_predict_tag_and_serve_agree_on_the_decision_for_real_photos(served, photos, tmp_path):
    url, run = served
    predictor = Predictor(run)
    library = tmp_path / "library"
    library.mkdir()
    for index, photo in enumerate(photos):
        (library / f"{index}.jpg").write_bytes(photo.read_bytes())
    for query, threshold, open_set in (("", None, True), (f"?{EVERYTHING}", 0.0, False)):
        report = tmp_path / f"report-{open_set}.csv"
        tag_files(predictor, [library], out_dir=tmp_path / f"out-{open_set}", report_path=report, threshold=threshold,
                  open_set=open_set)
        rows = report_rows(report)
        for index in range(len(photos)):
            data = (library / f"{index}.jpg").read_bytes()
            body, content_type = multipart(data) if index % 2 else (data, "image/jpeg")  # both ways of posting
            status, _, answer = call(url, f"/v1/predict{query}", body, content_type)
            assert status == 200, answer
            served_answer = json.loads(answer)
            direct = decide_for(predictor, data, threshold=threshold, open_set=open_set)
            row = rows[str((library / f"{index}.jpg").resolve())]
            assert served_answer["decision"] == direct.status == row["status"]
            assert served_answer["predictions"][0]["label"] == direct.prediction == row["prediction"]
            assert abs(served_answer["predictions"][0]["probability"] - direct.probability) < 1e-6
            if direct.status == "tagged":
                assert served_answer["place"]["latitude"] == direct.place.latitude
    status, _, answer = call(url, "/v1/model")
    model = json.loads(answer)
    assert status == 200
    assert model["classes"] == predictor.classes
    assert model["export_sha256"] == predictor.meta["sha256"]


def test_tag_answers_the_tagged_jpeg_or_its_sidecar_as_exiftool_reads_them(served, photos, tmp_path):
    url, run = served
    data = photos[0].read_bytes()
    status, headers, tagged = call(url, f"/v1/tag?{EVERYTHING}", data)
    assert status == 200
    assert headers["X-Landmark-Decision"] == "tagged"
    assert headers["Content-Type"] == "image/jpeg"
    decision = decide_for(Predictor(run), data, threshold=0.0, open_set=False)
    (tmp_path / "tagged.jpg").write_bytes(tagged)
    read = exiftool(tmp_path / "tagged.jpg")
    assert abs(read["Composite:GPSLatitude"] - decision.place.latitude) < 1e-4
    assert decision.place.display_name in read["XMP-dc:Subject"]
    assert Image.open(io.BytesIO(tagged)).tobytes() == Image.open(io.BytesIO(data)).tobytes()  # pixels untouched

    status, headers, sidecar = call(url, f"/v1/tag?{EVERYTHING}&sidecar=true", data)
    assert status == 200
    assert headers["Content-Type"].startswith("application/rdf+xml")
    (tmp_path / "photo.jpg.xmp").write_bytes(sidecar)
    assert decision.place.display_name in exiftool(tmp_path / "photo.jpg.xmp")["XMP-dc:Subject"]

    status, headers, untouched = call(url, "/v1/tag?threshold=1&tag_unfamiliar=1", data)  # none that sure: no tag
    assert (status, headers["X-Landmark-Decision"], untouched) == (200, "abstained", data)
    status, _, nothing = call(url, "/v1/tag?threshold=1&tag_unfamiliar=1&sidecar=true", data)
    assert (status, nothing) == (204, b"")

    png = io.BytesIO()
    Image.open(photos[0]).save(png, format="PNG")
    status, _, answer = call(url, f"/v1/tag?{EVERYTHING}", png.getvalue(), "image/png")
    assert status == 415
    assert "sidecar" in json.loads(answer)["error"]
    status, _, answer = call(url, f"/v1/tag?{EVERYTHING}&sidecar=1", png.getvalue(), "image/png")
    assert status == 200
    assert b"dc:subject" in answer


def _png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("body", "content_type", "status", "words"), [
    (b"just some text, not a photo\n", "application/octet-stream", 400, "not an image"),
    (b"", "image/jpeg", 400, "empty"),
    ("thin", "image/png", 400, "thin"),
    ("truncated", "image/jpeg", 400, ""),
    (b"plain", "text/plain", 415, "not text/plain"),
    ("form without file", "multipart", 400, "no 'file' field"),
    (b"--x\r\nbroken", "multipart/form-data", 400, "boundary"),
])
def test_bad_requests_are_a_4xx_with_one_line_of_json(served, photos, body, content_type, status, words):
    url, _ = served
    if body == "thin":
        body = _png((1, 60000))
    elif body == "truncated":
        body = photos[0].read_bytes()[:300]
    elif body == "form without file":
        body, content_type = multipart(photos[0].read_bytes(), field="photo")
    got, headers, answer = call(url, "/v1/predict", body, content_type)
    error = json.loads(answer)["error"]
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert words in error
    assert "\n" not in error
    assert "Traceback" not in error


def test_an_upload_over_the_limit_is_refused_by_its_declared_size_before_it_is_read(served):
    import http.client
    url, _ = served
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    connection.putrequest("POST", "/v1/predict")
    connection.putheader("Content-Type", "image/jpeg")
    connection.putheader("Content-Length", str(2 * 2**30))  # 2 GiB announced, 1 KiB sent
    connection.endheaders()
    connection.send(b"\xff\xd8" + b"\0" * 1022)
    response = connection.getresponse()
    assert response.status == 413
    assert "limit" in json.loads(response.read())["error"]
    status, _, answer = call(url, "/v1/predict?top_k=0", b"x")
    assert status == 422
    assert "top_k" in json.loads(answer)["error"]
    status, _, answer = call(url, "/v1/predict?threshold=2", b"x")
    assert status == 422
    assert "threshold" in json.loads(answer)["error"]


def test_ten_clients_fifty_requests_each_get_no_errors(served, photos):
    url, _ = served
    bodies = [photo.read_bytes() for photo in photos]

    def client(number: int) -> list[int]:
        return [call(url, "/v1/predict", bodies[(number + i) % len(bodies)])[0] for i in range(50)]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = [status for result in pool.map(client, range(10)) for status in result]
    assert len(statuses) == 500
    assert set(statuses) == {200}


def test_a_full_queue_answers_503_with_retry_after_and_never_hangs(finished_copy, photos):
    data = photos[0].read_bytes()
    with service(finished_copy, "--queue", "1", "--max-batch", "1", "--batch-wait-ms", "0") as url:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: call(url, "/v1/predict", data, timeout=60), range(96)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 503}
    assert 200 in statuses
    assert 503 in statuses
    busy = [(headers, body) for status, headers, body in answers if status == 503]
    assert all(headers["Retry-After"] == "1" and "busy" in json.loads(body)["error"] for headers, body in busy)


def test_another_address_needs_an_api_key_and_the_key_is_checked_on_every_request(finished_copy, photos):
    refused = landmark("serve", finished_copy, "--host", "0.0.0.0")
    assert "--api-key" in one_line_error(refused)
    with service(finished_copy, env={"LANDMARK_API_KEY": "s3cret"}) as url:
        status, headers, _ = call(url, "/v1/health")
        assert status == 401
        assert headers["WWW-Authenticate"] == "Bearer"
        status, _, answer = call(url, "/v1/predict", photos[0].read_bytes(), headers={"X-API-Key": "wrong"})
        assert status == 401
        assert "API key" in json.loads(answer)["error"]
        assert call(url, "/v1/health", headers={"X-API-Key": "s3cret"})[0] == 200
        assert call(url, "/v1/predict", photos[0].read_bytes(), headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert call(url, "/v1/health", headers={"Authorization": "bearer s3cret"})[0] == 200  # schemes ignore case
        assert call(url, "/v1/health", headers={"Authorization": "s3cret"})[0] == 401  # a bare key is no scheme
    assert "printable ASCII" in one_line_error(landmark("serve", finished_copy, "--api-key", "clé"))


def test_a_re_export_is_picked_up_without_a_restart_and_a_tampered_one_is_refused(served_alone, photos):
    url, run = served_alone
    before = json.loads(call(url, "/v1/model")[2])
    export_run(run, format="onnx")  # the user exports again: the next request answers with it
    after = json.loads(call(url, "/v1/model")[2])
    assert (before["format"], after["format"]) == ("torchscript", "onnx")
    assert after["reload_error"] is None
    assert call(url, "/v1/predict", photos[0].read_bytes())[0] == 200

    meta = json.loads((run / "export.json").read_text())
    (run / "export.json").write_text(json.dumps({**meta, "probability_threshold": 0.0}))  # not what was signed
    tampered = json.loads(call(url, "/v1/model")[2])
    assert tampered["format"] == "onnx"
    assert "kept the model loaded before" in tampered["reload_error"]
    assert tampered["probability_threshold"] == after["probability_threshold"]
    assert call(url, "/v1/predict", photos[0].read_bytes())[0] == 200  # the signed model still answers


def test_schemathesis_finds_no_server_error_in_the_services_own_openapi(served):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import not_a_server_error

    url, _ = served
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures = []

    for operation in schema.get_all_operations():
        strategy = operation.ok().as_strategy()

        @settings(max_examples=25, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @__import__("hypothesis").given(case=strategy)
        def check(case):
            response = case.call(base_url=url, timeout=60)
            if response.status_code >= 500:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))
            case.validate_response(response, checks=[not_a_server_error])

        check()
    assert failures == []
