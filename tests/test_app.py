"""Every page through Streamlit's AppTest, against a real artifacts folder with demo data and a trained run."""
import io
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from landmark_core.distributed import process_limit
from landmark_core.runs import list_runs, read_status

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["home", "explore", "train", "evaluate", "predict", "compare"]


@pytest.fixture()
def app_env(ui_artifacts, monkeypatch):
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(ui_artifacts))
    monkeypatch.chdir(ROOT)
    return ui_artifacts


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)


def test_app_entry_renders_navigation_and_start_page(app_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert at.title[0].value.endswith("Landmark Tagger")
    assert [r.label for r in at.sidebar.radio] == ["Photos to work with"]


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_exception(app_env, name):
    at = page(name).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title


def test_pages_without_data_explain_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(tmp_path))
    for name in PAGES:
        at = page(name).run()
        assert not at.exception
    assert any("dataset" in i.value for i in page("explore").run().info)
    assert any("Train" in i.value for i in page("predict").run().info)


def test_explore_shows_counts_samples_and_problems(app_env):
    at = page("explore").run()
    assert "5 classes" in at.caption[0].value
    assert len(at.get("image")) >= 8  # sample grid and augmentation preview
    assert any("readable" in s.value for s in at.success)


def test_predict_page_shows_five_predictions_for_an_upload(app_env):
    from landmark_core.predict import Predictor
    from landmark_core.tagging import decide_for
    at = page("predict").run()
    buffer = io.BytesIO()
    Image.open(next((app_env / "data" / "demo" / "test").rglob("*.jpg"))).save(buffer, format="PNG")
    at.file_uploader[0].set_value(("photo.png", buffer.getvalue(), "image/png"))
    at.run()
    assert not at.exception
    lists = [m.value for m in at.markdown if m.value.startswith("1. ")]
    assert lists and len(lists[0].splitlines()) == 5
    expected = decide_for(Predictor(next(r for r in list_runs() if r.state == "finished").path), buffer.getvalue())
    if expected.status == "tagged":
        assert any(expected.name in s.value for s in at.success), [s.value for s in at.success]
    else:  # abstained or unknown: a warning that names the top guess, and no tag
        assert not at.success and any(expected.name in w.value for w in at.warning)


def test_predict_page_reports_a_bad_upload_and_still_predicts_the_good_one(app_env):
    at = page("predict").run()
    good = next((app_env / "data" / "demo" / "test").rglob("*.jpg")).read_bytes()
    at.file_uploader[0].set_value([("fake.jpg", b"<html>not a photo</html>", "image/jpeg"), ("good.jpg", good, "image/jpeg")])
    at.run()
    assert not at.exception
    assert any("fake.jpg" in e.value for e in at.error)
    assert [m.value for m in at.markdown if m.value.startswith("1. ")]


def test_evaluate_page_shows_metrics_and_confusion_matrix(app_env):
    at = page("evaluate").run()
    assert not at.exception
    assert [m.label for m in at.metric][:2] == ["Top-1 accuracy", "Top-5 accuracy"]
    assert any(s.value == "Confusion matrix" for s in at.subheader)
    assert at.get("vega_lite_chart")


def test_train_page_starts_a_run_in_the_background(app_env):
    before = {r.run_id for r in list_runs(app_env)}
    at = page("train").run()
    at.number_input[0].set_value(1)    # epochs
    at.number_input[2].set_value(8)    # batch size
    at.number_input[3].set_value(32)   # image size
    processes = next(n for n in at.number_input if n.label == "Training processes")
    processes.set_value(min(2, process_limit()))  # data-parallel through torchrun where there are 2 cores
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    assert not at.exception
    assert any("Started" in s.value for s in at.success)
    new = [r for r in list_runs(app_env) if r.run_id not in before]
    assert len(new) == 1
    deadline = time.time() + 240
    while read_status(new[0].path)["state"] in ("queued", "running") and time.time() < deadline:
        time.sleep(1)
    status = read_status(new[0].path)
    assert status["state"] == "finished", status
    assert status["processes"] == min(2, process_limit())
    at = page("train").run()
    assert "finished" in at.get("progress")[0].proto.text
    table = at.dataframe[-1].value
    assert table.loc[table["run"] == new[0].run_id, "processes"].item() == min(2, process_limit())


def test_evaluate_shows_calibration_and_coverage_at_precision(app_env):
    at = page("evaluate").run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert {"Calibration error (test ECE)", "Temperature", "Coverage at 95% precision",
            "Coverage at 98% precision"} <= set(labels), labels
    assert any("Calibration: confidence vs accuracy" in s.value for s in at.subheader)


def test_explore_reports_whether_test_photos_leak_from_train(app_env):
    at = page("explore").run()
    assert not at.exception
    assert any("No test photo is also a training photo" in s.value for s in at.success)


def test_evaluate_shows_the_open_set_decision(app_env):
    at = page("evaluate").run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert {"Known test photos tagged", "Unknown photos tagged", "AUROC known vs unknown"} <= set(labels), labels
    assert any("Known or unknown" in s.value for s in at.subheader)


def test_predict_page_agrees_with_the_library_on_unknown_photos(app_env):
    """The page's outcome for each photo of the demo's unknown/ folder is the library's (and so the CLI's)."""
    from landmark_core.predict import Predictor
    from landmark_core.tagging import decide_for
    run = next(r for r in list_runs() if r.state == "finished")
    predictor = Predictor(run.path)
    for photo in sorted((app_env / "data" / "demo" / "unknown").glob("*.jpg"))[:3]:
        expected = decide_for(predictor, photo).status
        at = page("predict").run()
        at.file_uploader[0].set_value((photo.name, photo.read_bytes(), "image/jpeg"))
        at.run()
        assert not at.exception
        shown_unknown = any(w.value.startswith("**Unknown**") for w in at.warning)
        assert shown_unknown == (expected == "unknown"), (photo.name, expected)
        assert bool(at.success) == (expected == "tagged")


def test_explore_lists_classes_without_a_place_and_saves_places_csv(app_env, tmp_path):
    at = page("explore").run()
    assert not at.exception
    assert any("Places" == s.value for s in at.subheader)
    save = next(b for b in at.button if b.label.startswith("Save places.csv"))
    save.click().run()
    assert not at.exception
    assert (app_env / "data" / "demo" / "places.csv").exists()
    (app_env / "data" / "demo" / "places.csv").unlink()  # the shared demo stays as it was


def test_train_form_refuses_more_frozen_epochs_than_epochs(app_env):
    before = {r.run_id for r in list_runs(app_env)}
    at = page("train").run()
    at.number_input[0].set_value(1)  # epochs
    frozen = next(n for n in at.number_input if n.label.startswith("Frozen-backbone epochs"))
    frozen.set_value(8)
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    assert not at.exception
    assert any("freeze_epochs (8) cannot exceed epochs (1)" in e.value for e in at.error)
    assert {r.run_id for r in list_runs(app_env)} == before


def test_predict_page_explains_a_model_it_cannot_trust(app_env, tmp_path, monkeypatch):
    import streamlit as st
    st.cache_resource.clear()
    monkeypatch.setenv("LANDMARK_KEY", str(tmp_path / "someone-elses-key"))
    at = page("predict").run()
    st.cache_resource.clear()
    assert not at.exception
    assert any("landmark export" in e.value for e in at.error)


def test_explore_reports_a_damaged_places_file_and_still_offers_the_table(app_env):
    places = app_env / "data" / "demo" / "places.csv"
    places.write_text("folder,latitude,longitude\nx,north,1\n")
    try:
        at = page("explore").run()
        assert not at.exception
        assert any("must be numbers" in e.value for e in at.error)
        assert any(b.label.startswith("Save places.csv") for b in at.button)
    finally:
        places.unlink()
