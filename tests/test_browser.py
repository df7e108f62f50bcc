"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

Starts from an empty artifacts folder, creates the demo data from the sidebar,
trains a 1-epoch run from the Train page and watches it finish in the live
view, opens Evaluate, then uploads a photo on Predict. Screenshots of every step
go to test-output/browser/.
"""
import os
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

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "LANDMARK_ARTIFACTS": str(tmp_path / "artifacts")}
    log = open(tmp_path / "streamlit.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true",
                                "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:])
    yield url, tmp_path / "artifacts"
    process.terminate()
    process.wait(timeout=30)
    log.close()


def test_demo_train_evaluate_predict_in_chromium(server):
    from playwright.sync_api import expect, sync_playwright

    url, artifacts = server
    expect.set_options(timeout=120_000)  # the first script run imports torch: seconds on a 2-core machine
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
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
        expect(page.get_by_text("Epochs")).to_be_visible()
        for label, value in (("Epochs", "1"), ("Batch size", "32"), ("Image size (px)", "32")):
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Tab")
        page.get_by_role("button", name="Start").click()
        expect(page.get_by_text("Started")).to_be_visible()
        shot("04-train-started")
        expect(page.get_by_text("finished · epoch 1/1")).to_be_visible(timeout=300_000)
        no_exceptions()
        shot("05-train-finished")

        page.goto(f"{url}/evaluate")
        expect(page.get_by_text("Confusion matrix")).to_be_visible()
        expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
        no_exceptions()
        shot("06-evaluate")

        page.goto(f"{url}/predict")
        photo = next((artifacts / "data" / "demo" / "test" / "16.Eiffel_Tower").glob("*.jpg"))
        page.locator("input[type='file']").set_input_files(str(photo))
        ranked = page.locator("[data-testid='stMarkdownContainer'] ol li")
        expect(ranked).to_have_count(5)
        no_exceptions()
        shot("07-predict")
        browser.close()
    assert len(list(SHOTS.glob("*.png"))) >= 7
