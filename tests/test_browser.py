"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

Starts from an empty artifacts folder, creates the demo data from the sidebar,
trains a 1-epoch run from the Train page and watches it finish in the live
view, opens Evaluate, then uploads a photo on Predict. Screenshots of every step
go to test-output/browser/.
"""
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(artifacts: Path, log_path: Path):
    port = free_port()
    env = {**os.environ, "LANDMARK_ARTIFACTS": str(artifacts)}
    log = open(log_path, "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true",
                                "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture()
def server(tmp_path):
    with streamlit_server(tmp_path / "artifacts", tmp_path / "streamlit.log") as url:
        yield url, tmp_path / "artifacts"


@contextlib.contextmanager
def chromium_browser():
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=120_000)  # the first script run imports torch: seconds on a 2-core machine
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_demo_train_evaluate_predict_in_chromium(server):
    from playwright.sync_api import expect

    url, artifacts = server
    shutil.rmtree(SHOTS, ignore_errors=True)  # only this run's screenshots count
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_browser() as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        requested = []  # every request of every page: the app must never reach past this machine
        context.on("request", lambda request: requested.append(request.url))
        page = context.new_page()
        page.set_default_timeout(120_000)

        def shot(name):
            page.wait_for_timeout(500)
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

        def no_exceptions():
            assert page.locator("[data-testid='stException']").count() == 0

        page.goto(url)
        expect(page.get_by_text("What to do next")).to_be_visible()
        shot("01-start")
        page.get_by_role("button", name="Create demo data").click()
        expect(page.get_by_text("12 landmark classes, drawn procedurally")).to_be_visible(timeout=180_000)
        no_exceptions()
        shot("02-demo-created")

        page.goto(f"{url}/explore")
        expect(page.get_by_text("Images per class")).to_be_visible()
        no_exceptions()
        shot("03-explore")

        page.goto(f"{url}/train")
        expect(page.get_by_text("Epochs", exact=True)).to_be_visible()
        for label, value in (("Epochs", "1"), ("Batch size", "32"), ("Image size (px)", "32")):
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Tab")
        page.get_by_role("button", name="Start", exact=True).click()
        expect(page.get_by_text("Started")).to_be_visible()
        shot("04-train-started")
        page.get_by_role("button", name="Stop", exact=True).click()  # while it decodes or trains: cancelled, resumable
        # cancelled, or interrupted when the SIGTERM came before the trainer had started: both resume
        expect(page.get_by_text(re.compile(r"(cancelled|interrupted) ·"))).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Resume", exact=True).click()
        expect(page.get_by_text("finished · epoch 1/1")).to_be_visible(timeout=300_000)
        no_exceptions()
        shot("05-train-stopped-resumed-finished")

        page.goto(f"{url}/evaluate")
        expect(page.get_by_text("Confusion matrix")).to_be_visible()
        expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
        expect(page.get_by_text("Where the classes are")).to_be_visible()  # the offline world map
        expect(page.get_by_role("button", name="Download the model", exact=False)).to_be_visible()
        no_exceptions()
        shot("06-evaluate")

        page.goto(f"{url}/predict")
        # two photos with the same file name (test_0000.jpg of two classes): both are predicted, nothing collides
        photos = [next((artifacts / "data" / "demo" / "test" / folder).glob("test_0000.jpg"))
                  for folder in ("16.Eiffel_Tower", "09.Golden_Gate_Bridge")]
        page.locator("input[type='file']").set_input_files([str(p) for p in photos])
        ranked = page.locator("[data-testid='stMarkdownContainer'] ol li")
        expect(ranked).to_have_count(10)
        no_exceptions()
        page.get_by_text("Show where each model looked (Grad-CAM)").click()
        expect(page.get_by_text("Grad-CAM ·").first).to_be_visible()
        no_exceptions()
        shot("07-predict-two-same-named-photos-with-grad-cam")

        # a zip of class folders from the browser: the same checked import as `landmark data import`
        import zipfile
        archive = artifacts.parent / "my_photos.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for folder in sorted((artifacts / "data" / "demo" / "train").iterdir())[:4]:
                for photo in sorted(folder.glob("*.jpg"))[:6]:
                    bundle.write(photo, photo.relative_to(artifacts / "data" / "demo" / "train").as_posix())
        page.get_by_text("Import a zip of photos").click()
        page.locator("[data-testid='stSidebar'] input[type='file']").set_input_files(str(archive))
        expect(page.get_by_text(re.compile(r"4 classes, \d+ train / \d+ test photos"))).to_be_visible()
        no_exceptions()
        shot("08-zip-imported")

        page.goto(f"{url}/train")
        page.get_by_role("button", name="Delete", exact=True).click()
        page.get_by_role("button", name="Delete for good", exact=True).click()
        expect(page.get_by_text("No runs yet")).to_be_visible()
        no_exceptions()
        shot("09-run-deleted")
    assert len(list(SHOTS.glob("*.png"))) >= 9
    outside = [u for u in requested if not u.startswith(("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:"))]
    assert requested and not outside, outside[:10]


def test_ten_sessions_predict_while_two_runs_train(tmp_path):
    """Load: 10 browser sessions upload and predict at once while two training runs use the CPU."""
    from playwright.sync_api import expect

    from landmark_core.demo import DEMO_CLASSES, generate_demo_dataset
    from landmark_core.fileio import read_json
    from landmark_core.runs import launch_background, read_status
    from landmark_core.pipeline import create_run, train_new

    from conftest import tiny_config

    artifacts = tmp_path / "artifacts"
    data = artifacts / "data" / "demo"
    generate_demo_dataset(data, classes=DEMO_CLASSES[:6], train_per_class=10, test_per_class=4, workers=1)
    run_dir = train_new(tiny_config(data, epochs=1), artifacts)
    expected = read_json(run_dir / "predictions.json")
    background = [create_run(tiny_config(data, epochs=200, image_size=64), artifacts) for _ in range(2)]
    os.environ["LANDMARK_ARTIFACTS"] = str(artifacts)
    try:
        for busy in background:
            launch_background(busy)
    finally:
        del os.environ["LANDMARK_ARTIFACTS"]
    sessions, errors = 10, 0
    try:
        with streamlit_server(artifacts, tmp_path / "streamlit.log") as url, chromium_browser() as browser:
            pages = [browser.new_context().new_page() for _ in range(sessions)]
            for page in pages:
                page.set_default_timeout(120_000)  # ten sessions and two trainers share two cores
                page.goto(f"{url}/predict", wait_until="commit")
            for page in pages:
                expect(page.locator("input[type='file']")).to_be_attached()
            photos = [expected[i % len(expected)] for i in range(sessions)]
            for page, photo in zip(pages, photos):
                page.locator("input[type='file']").set_input_files(photo["path"])
            classes = read_json(run_dir / "evaluation.json")["classes"]
            from landmark_core.places import display_name
            for page, photo in zip(pages, photos):
                ranked = page.locator("[data-testid='stMarkdownContainer'] ol li")
                expect(ranked).to_have_count(5)
                top = ranked.first.inner_text()
                assert top.startswith(display_name(classes[photo["predicted"]])), (top, photo)
                errors += page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").count()
            assert all(read_status(b)["state"] == "running" for b in background)  # the load really ran beside training
    finally:
        for busy in background:
            (busy / "CANCEL").touch()
    print(f"load test: {sessions} sessions, {errors} errors")
    assert errors == 0
