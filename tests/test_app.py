"""Every page through Streamlit's AppTest, against a real artifacts folder with demo data and a trained run."""
import io
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from landmark_core.runs.config import TrainConfig
from landmark_core.training.distributed import process_limit
from landmark_core.core.fileio import read_json
from landmark_core.runs.run import Run, list_runs, read_status

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["home", "explore", "train", "evaluate", "predict", "compare", "review"]


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
    assert any("landmark tag" in i.value for i in page("review").run().info)


def test_explore_shows_counts_samples_and_problems(app_env):
    at = page("explore").run()
    assert "5 classes" in at.caption[0].value
    assert len(at.get("image")) >= 8  # sample grid and augmentation preview
    assert any("readable" in s.value for s in at.success)


def test_predict_page_shows_five_predictions_for_an_upload(app_env):
    from landmark_core.tagging.predict import Predictor
    from landmark_core.tagging.decision import decide_for
    at = page("predict").run()
    buffer = io.BytesIO()
    Image.open(next((app_env / "data" / "demo" / "test").rglob("*.jpg"))).save(buffer, format="PNG")
    at.file_uploader[0].set_value(("photo.png", buffer.getvalue(), "image/png"))
    at.run()
    assert not at.exception
    assert not at.json
    assert not any("Place(" in m.value for m in at.markdown)  # no stray dump of the places
    lists = [m.value for m in at.markdown if m.value.startswith("1. ")]
    assert lists
    assert len(lists[0].splitlines()) == 5
    expected = decide_for(Predictor(next(r for r in list_runs() if r.state == "finished").path), buffer.getvalue())
    if expected.status == "tagged":
        assert any(expected.name in s.value for s in at.success), [s.value for s in at.success]
    else:  # abstained or unknown: a warning that names the top guess, and no tag
        assert not at.success
        assert any(expected.name in w.value for w in at.warning)


def test_predict_page_reports_a_bad_upload_and_still_predicts_the_good_one(app_env):
    at = page("predict").run()
    good = next((app_env / "data" / "demo" / "test").rglob("*.jpg")).read_bytes()
    strip = io.BytesIO()
    Image.new("RGB", (1, 60000), "grey").save(strip, "PNG")  # a readable header: refused when it is decoded
    at.file_uploader[0].set_value([("fake.jpg", b"<html>not a photo</html>", "image/jpeg"),
                                   ("strip.png", strip.getvalue(), "image/png"), ("good.jpg", good, "image/jpeg")])
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    # each error names its file and speaks of photos, not of the library that reads them (issue 24, item 12)
    assert any(e.startswith("fake.jpg: not an image") for e in errors), errors
    assert any(e.startswith("strip.png: 1x60000 is too thin") for e in errors), errors
    assert not any("Pillow" in e or e.startswith("image:") for e in errors)
    assert [m.value for m in at.markdown if m.value.startswith("1. ")]


def test_evaluate_page_shows_metrics_and_confusion_matrix(app_env):
    at = page("evaluate").run()
    assert not at.exception
    assert [m.label for m in at.metric][:2] == ["Top-1 accuracy", "Top-5 accuracy"]
    assert any(s.value == "Confusion matrix" for s in at.subheader)
    assert at.get("vega_lite_chart")
    assert any("Download the model" in b.proto.label for b in at.get("download_button"))


def test_train_page_starts_a_run_in_the_background(app_env):
    before = {r.run_id for r in list_runs(app_env)}
    at = page("train").run()
    at.number_input[0].set_value(1)    # epochs
    at.number_input[2].set_value(8)    # batch size
    at.number_input[3].set_value(32)   # image size
    processes = next(n for n in at.number_input if n.label == "Training processes")
    processes.set_value(min(2, process_limit()))  # data-parallel through torchrun where there are 2 cores
    unfamiliar = next(n for n in at.number_input if n.label == "Unfamiliar photos tagged (%)")
    assert unfamiliar.value == 7.0  # efficientnet_lite2's own threshold
    unfamiliar.set_value(5.0)
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    assert not at.exception
    assert any("Started" in s.value for s in at.success)
    new = [r for r in list_runs(app_env) if r.run_id not in before]
    assert len(new) == 1
    assert Run(new[0].path).config().pseudo_unknown_pass == 0.05
    assert at.selectbox(key="live_run_select").value == new[0].run_id  # the live view follows the new run
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
    assert {"Known test photos tagged", "Unknown photos tagged"} <= set(labels), labels
    # the AUROC says what it was measured against (issue 24, item 9)
    auroc = next(m for m in at.metric if m.label.startswith("AUROC"))
    assert auroc.label in ("AUROC known vs unknown photos", "AUROC known vs held-out classes")
    assert "unknown/ photos" in auroc.help
    assert ("holding each class out" in auroc.help) == auroc.label.endswith("classes")
    assert next(m for m in at.metric if m.label == "Temperature").help
    assert any("Known or unknown" in s.value for s in at.subheader)
    # the operating point in words, with the run's own held-out-classes estimate
    run = next(r for r in list_runs() if r.state == "finished")
    share = read_json(run.path / "evaluation.json")["open_set"]["held_out_classes"]["tagged_share"]
    words = next(i.value for i in at.info if "never learned" in i.value)
    assert f"roughly **{share:.0%}** would get a wrong name and place" in words
    assert "table 8" in words
    # and whose features the familiarity compares
    config = TrainConfig.from_dict(read_json(run.path / "config.json"))
    assert any(c.value.startswith(f"Familiarity compares {config.familiarity_features}. ") for c in at.caption)
    # and that the unknown/ photos it calibrated with also count against photos that look like them
    open_set = read_json(run.path / "evaluation.json")["open_set"]
    assert open_set["distractors"] == open_set["unknown_photos"]["calibration"] > 0
    caption = next(c.value for c in at.caption if c.value.startswith("Familiarity compares"))
    assert (f"{open_set['unknown_photos']['calibration']} to calibrate (each also counts against a photo that looks "
            "more like it than like the landmark's own training photos)") in caption


def test_predict_page_agrees_with_the_library_on_unknown_photos(app_env):
    """The page's outcome for each photo of the demo's unknown/ folder is the library's (and so the CLI's)."""
    from landmark_core.tagging.predict import Predictor
    from landmark_core.tagging.decision import decide_for
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


def test_train_page_renames_and_deletes_a_run(app_env):
    from landmark_core.pipeline import create_run
    from helpers import tiny_config
    run_dir = create_run(tiny_config(app_env / "data" / "demo", epochs=1), app_env)
    at = page("train")
    at.session_state["live_run_select"] = run_dir.name
    at.run()
    assert not at.exception
    assert at.selectbox(key="live_run_select").value == run_dir.name
    at.text_input(key=f"rename-{run_dir.name}").set_value("my-first-run")
    at.button(key=f"do-rename-{run_dir.name}").click()
    at.run()
    assert not at.exception
    assert at.selectbox(key="live_run_select").value == "my-first-run"
    assert (app_env / "runs" / "my-first-run" / "config.json").is_file()
    assert not run_dir.exists()
    at.button(key="do-delete-my-first-run").click()
    at.run()
    assert not at.exception
    assert not (app_env / "runs" / "my-first-run").exists()
    assert "my-first-run" not in at.selectbox(key="live_run_select").options


def test_choosing_the_real_set_before_downloading_it_never_falls_back_to_the_demo(app_env):
    at = page("train").run()
    assert not at.info or not any("Choose or create a dataset" in i.value for i in at.info)
    at.session_state["dataset_choice"] = "landmark_images (50 classes)"
    at.session_state["dataset_path"] = None
    at.run()
    assert not at.exception
    assert any("Choose or create a dataset" in i.value for i in at.info)


def test_train_form_offers_weight_decay_label_smoothing_and_early_stopping(app_env):
    at = page("train").run()
    labels = {n.label for n in at.number_input}
    assert {"Weight decay", "Label smoothing", "Early stopping (epochs without improvement)", "Training processes"} <= labels
    assert not any("--weights" in c.value for c in at.caption)


def test_confusion_matrix_labels_every_one_of_50_classes(fifty_class_artifacts, monkeypatch):
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(fifty_class_artifacts))
    monkeypatch.chdir(ROOT)
    at = page("evaluate").run()
    assert not at.exception, at.exception
    import json
    specs = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    confusion = next(s for s in specs if "true_short" in json.dumps(s.get("encoding", s.get("layer", ""))))
    encoding = confusion.get("encoding") or confusion["layer"][0]["encoding"]
    assert len(set(encoding["y"]["sort"])) == 50
    assert encoding["y"]["axis"]["labelOverlap"] is False
    assert (confusion.get("height") or confusion["layer"][0].get("height", 0)) >= 50 * 18  # a row per class (the
    # browser test measures on the page that no two labels overlap)
    # the per-class chart labels classes as the confusion matrix does (issue 24, item 16)
    per_class = next(s for s in specs if s.get("encoding", {}).get("y", {}).get("field") == "landmark")
    assert per_class["height"] >= 50 * 20
    assert per_class["encoding"]["y"]["axis"]["labelOverlap"] is False
    at.slider[0].set_value(10).run()  # only the 10 most-confused classes
    specs = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    confusion = next(s for s in specs if "true_short" in json.dumps(s.get("encoding", s.get("layer", ""))))
    encoding = confusion.get("encoding") or confusion["layer"][0]["encoding"]
    assert len(encoding["y"]["sort"]) == 10
    assert not any(s.value == "Where the classes are" for s in at.subheader)  # invented places have no coordinates


def test_grad_cam_shows_in_the_evaluate_galleries_and_on_predict(app_env):
    at = page("evaluate").run()
    def galleries(at):  # the confusion-cell ("p=…") and top-losses ("loss …") images; not the unknown-photo gallery
        return [image for image in at.get("image") if image.captions and
                image.captions[0].removeprefix("Grad-CAM · ").startswith(("p=", "loss "))]

    before = [image.proto.imgs[0].url for image in galleries(at)]
    assert before
    next(t for t in at.toggle if t.label.startswith("Show Grad-CAM")).set_value(True).run()
    assert not at.exception, at.exception
    after = galleries(at)
    assert len(after) == len(before)  # the same galleries, now as heatmaps: new pictures, captions that say so
    assert not {image.proto.imgs[0].url for image in after} & set(before)
    assert all(image.captions[0].startswith("Grad-CAM · ") for image in after)
    at = page("predict").run()
    next(t for t in at.toggle if t.label.startswith("Show where each model looked")).set_value(True)
    at.run()
    assert not at.exception


def test_evaluate_draws_class_places_on_the_offline_world_map(app_env):
    at = page("evaluate").run()
    assert any(s.value == "Where the classes are" for s in at.subheader)
    import json
    specs = [chart.proto.spec for chart in at.get("vega_lite_chart")]
    world = next(json.loads(s) for s in specs if "topojson" in s)
    world.pop("$schema")  # the spec's version name, never fetched
    text = json.dumps(world)
    assert '"url"' not in text
    assert "http" not in text  # the outline is inline: nothing is fetched


def _zip_of(folder: Path, extra: dict | None = None) -> bytes:
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*.jpg")):
            archive.write(path, path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_of_class_folders_imports_from_the_browser_and_a_hostile_one_is_refused(tiny_dataset, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["dataset_choice"] = "Import a zip of photos"
    at.run()
    assert not at.exception
    assert at.sidebar.file_uploader  # offered in the sidebar's dataset chooser

    def sidebar_import():  # the chooser's import, alone (AppTest drops sidebar elements on reruns under navigation)
        from pages.common import import_zip_from_browser
        import_zip_from_browser()

    at = AppTest.from_function(sidebar_import, default_timeout=120).run()
    at.file_uploader[0].set_value(("escape.zip", _zip_of(tiny_dataset / "train", {"../evil.jpg": b"x"}),
                                   "application/zip")).run()
    assert not at.exception
    assert at.error
    assert not (tmp_path / "artifacts" / "data" / "escape").exists()
    assert not (tmp_path / "artifacts" / "data" / "evil.jpg").exists()
    at.file_uploader[0].set_value(("my_photos.zip", _zip_of(tiny_dataset / "train"), "application/zip")).run()
    assert not at.exception, at.exception
    assert any("3 classes" in s.value for s in at.success), [s.value for s in at.success]
    imported = tmp_path / "artifacts" / "data" / "my_photos"
    assert len(list(imported.rglob("*.jpg"))) == len(list((tiny_dataset / "train").rglob("*.jpg")))
    assert at.session_state["dataset_path"] == str(imported)


def test_explore_finds_likely_mislabelled_photos_moves_one_and_undoes_it(app_env):
    at = page("explore").run()
    at.button(key="find_suspects").click().run()
    assert not at.exception, at.exception
    move_buttons = [b for b in at.button if (b.key or "").startswith("move-")]
    assert move_buttons
    photo = move_buttons[0].key.removeprefix("move-")
    move_buttons[0].click().run()
    assert not at.exception, at.exception
    assert not Path(photo).exists()
    at.button(key="undo_move").click().run()
    assert not at.exception
    assert Path(photo).exists()


def test_removing_a_model_keeps_the_threshold_the_user_chose(ui_artifacts, tmp_path, monkeypatch):
    """Two models whose own suggested thresholds differ: the user's threshold survives removing the tagging model."""
    import shutil
    from landmark_core.export.exporter import export_run
    from landmark_core.core.fileio import read_json, write_json_atomic
    source = next(r for r in list_runs(ui_artifacts) if r.state == "finished").path
    artifacts = tmp_path / "artifacts"
    for run_id, suggested in (("run-a", 0.55), ("run-b", 0.8)):  # run-b sorts first: the tagging model
        copy = shutil.copytree(source, artifacts / "runs" / run_id)
        calibration = read_json(copy / "calibration.json")
        calibration["best"]["probability_threshold"] = suggested
        write_json_atomic(copy / "calibration.json", calibration)
        export_run(copy)
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(artifacts))
    monkeypatch.chdir(ROOT)
    at = page("predict").run()
    assert at.slider[0].value == pytest.approx(0.8)  # the tagging model's suggestion until the user moves it
    at.slider[0].set_value(0.33).run()
    at.multiselect[0].unselect(at.multiselect[0].value[0]).run()  # remove the tagging model (run-b)
    assert not at.exception, at.exception
    assert at.slider[0].value == pytest.approx(0.33)
    assert any("run-a" in c.value for c in at.caption if c.value.startswith("Tags come from"))


def test_predict_page_offers_sidecars_instead_of_copies(app_env):
    """The same choice as `landmark tag --sidecars`: the tags in photo.jpg.xmp beside an untouched original."""
    import zipfile

    from landmark_core.tagging.predict import Predictor
    from landmark_core.tagging.decision import decide_for
    predictor = Predictor(next(r for r in list_runs() if r.state == "finished").path)
    # photos the run trained on are as familiar as photos get: tagged at threshold 0
    photos = sorted((app_env / "data" / "demo" / "train").rglob("*.jpg"))
    tagged = [p for p in photos if decide_for(predictor, p, threshold=0.0).status == "tagged"][:2]
    assert len(tagged) == 2
    at = page("predict").run()
    at.slider[0].set_value(0.0).run()
    at.radio(key="tag_into").set_value("XMP sidecars").run()
    at.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/jpeg") for p in tagged])
    at.run()
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels.count("Download XMP sidecar") == 2
    assert "Download tagged copy" not in labels
    zipped = next(b for b in at.get("download_button") if b.proto.label.endswith("XMP sidecars (zip)"))
    assert zipped is not None
    from landmark_core.tagging.writing import tagged_zip
    archive = zipfile.ZipFile(io.BytesIO(tagged_zip([(p.name, p.read_bytes(), decide_for(predictor, p, threshold=0.0))
                                                     for p in tagged], sidecars_only=True)))
    assert sorted(archive.namelist()) == sorted(f"{p.name}.xmp" for p in tagged)
    assert all(b"dc:subject" in archive.read(name) for name in archive.namelist())


def test_review_page_judges_a_photo_of_a_report_and_undoes_it(teachable, tmp_path, monkeypatch):
    from helpers import tagged_report
    run, data, library = teachable
    report = tagged_report(run, library, tmp_path)
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(run.parent.parent))
    monkeypatch.chdir(tmp_path)  # where `landmark tag` was run
    at = page("review").run()
    assert at.selectbox(key="review_found").value == str(report)  # found below the working folder: offered
    at.text_input(key="review_report").input(str(report)).run()
    assert not at.exception
    assert not at.error
    photo = str(library / "noise.jpg")
    at.selectbox(key=f"verdict-{photo}").set_value("✖ not a landmark").run()
    at.button(key=f"save-{photo}").click().run()
    assert (data / "unknown" / "noise.jpg").is_file()
    assert any("not a landmark" in s.value for s in at.success)
    at.button(key=f"undo-{photo}").click().run()
    assert not (data / "unknown" / "noise.jpg").exists()
    assert not at.exception


def test_train_page_asks_before_a_second_run_shares_the_cores(app_env):
    """Issue 24, item 3: a Start while another run trains asks first; nothing starts until the answer."""
    import os
    from landmark_core.pipeline import create_run
    from landmark_core.runs.manage import delete_run
    from landmark_core.runs.run import write_status
    from helpers import tiny_config
    busy = create_run(tiny_config(app_env / "data" / "demo", epochs=1), app_env)
    write_status(busy, state="running", pid=os.getpid(), session_started=time.time(), stage="training")
    try:
        before = {r.run_id for r in list_runs(app_env)}
        at = page("train").run()
        at.button(key="FormSubmitter:train_form-Start").click()
        at.run()
        assert not at.exception
        assert any(f"{busy.name} is training already" in w.value and "Start anyway?" in w.value for w in at.warning)
        assert {r.run_id for r in list_runs(app_env)} == before
        assert not at.success
        assert at.button(key="start_anyway")
        at.button(key="start_cancelled").click()
        at.run()
        assert not at.exception
        assert not any("training already" in w.value for w in at.warning)
        assert {r.run_id for r in list_runs(app_env)} == before
    finally:
        write_status(busy, state="cancelled", session_started=None)
        delete_run(busy)


def test_train_page_shows_a_stopped_run_as_stopped_with_its_own_clock(app_env):
    """Issue 24, items 4 and 7: Stop is no failure (no yellow box, no error in the table), and the progress line
    says where the run stopped and how long it worked, with no ETA."""
    from landmark_core.pipeline import create_run
    from landmark_core.runs.states import STOPPED_BY_REQUEST
    from landmark_core.runs.manage import delete_run
    from landmark_core.runs.run import write_status
    from helpers import tiny_config
    run_dir = create_run(tiny_config(app_env / "data" / "demo", epochs=3), app_env)
    write_status(run_dir, state="cancelled", error=STOPPED_BY_REQUEST, seconds=64.0, session_started=None)
    try:
        at = page("train")
        at.session_state["live_run_select"] = run_dir.name
        at.run()
        assert not at.exception
        assert not at.warning
        assert not at.error
        text = at.get("progress")[0].proto.text
        assert "stopped after epoch 0 of 3 · elapsed 1m 04s" in text
        assert "ETA" not in text
        assert "signal" not in text
        table = at.dataframe[-1].value
        row = table.loc[table["run"] == run_dir.name]
        assert row["state"].item() == "stopped"
        assert row["error"].item() == ""
        assert row["time"].item() == "1m 04s"
        assert "None" not in table.to_string()
        assert any(b.label == "Resume" for b in at.button)
    finally:
        delete_run(run_dir)


def test_train_page_says_how_big_the_model_is_once_and_what_the_run_will_do(app_env):
    """Issue 24, item 8: one measured size for this dataset's head (no quoted ImageNet figure beside it), help on
    the augmentation strength."""
    at = page("train").run()
    model_caption = next(c.value for c in at.caption if "M parameters" in c.value)
    assert model_caption.count("parameters") == 1
    assert "params" not in model_caption
    assert "5-class head" in model_caption
    assert "multiply-adds" in model_caption
    strength = next(s for s in at.slider if s.label == "Augmentation strength")
    assert strength.help


@pytest.fixture()
def run_on_another_dataset(app_env, trained_run):
    """A finished run trained on another dataset (the tiny one) beside the demo-trained run, removed after."""
    import shutil
    copy = app_env / "runs" / "29991231-000000-scratch_cnn-other"
    shutil.copytree(trained_run, copy)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def test_pages_follow_the_sidebars_dataset_and_show_other_runs_on_request(app_env, run_on_another_dataset):
    """Issue 24, items 2 and 6: with the demo chosen, Evaluate, Predict and Compare offer the demo-trained run
    (not the newer run of another dataset); a toggle shows the others, and Compare then says in words that
    runs on different datasets share no test photo instead of charting empty bars."""
    demo = str(app_env / "data" / "demo")
    other = run_on_another_dataset.name
    for name, key in (("evaluate", "evaluate"), ("predict", "predict"), ("compare", "compare")):
        at = page(name)
        at.session_state["dataset_path"] = demo
        at.run()
        assert not at.exception, name
        assert at.toggle(key=f"{key}-other-datasets").label == "Also runs trained on other datasets (1)"
        offered = [o for w in [*at.selectbox, *at.multiselect] for o in w.options]
        assert not any(other in str(o) for o in offered), (name, offered)
    at = page("predict")
    at.session_state["dataset_path"] = demo
    at.run()
    assert at.get("button_group")[0].proto.label.startswith("…or try test photos of demo")

    at = page("compare")
    at.session_state["dataset_path"] = demo
    at.run()
    at.toggle(key="compare-other-datasets").set_value(True)
    at.run()  # the two newest: the other dataset's run (its name sorts last) and the newest demo run
    assert other in at.multiselect[0].values[0]
    assert other not in at.multiselect[0].values[1]
    assert not at.exception
    assert any("were tested on different photos" in i.value and "not photo by photo" in i.value for i in at.info)
    assert not any("exactly the same" in m.value for m in at.markdown)
    assert "Where they disagree" not in [s.value for s in at.subheader]
    if any(s.value.startswith("Per-class") for s in at.subheader):  # the class names both datasets use
        assert any("the classes they share" in i.value for i in at.info)


def test_home_checklist_counts_the_runs_of_the_dataset_in_use(app_env, tmp_path):
    at = AppTest.from_file(str(ROOT / "pages" / "home.py"), default_timeout=120)
    at.session_state["dataset_path"] = str(tmp_path)  # a folder with no run trained on it
    at.run()
    assert not at.exception
    lines = [m.value for m in at.markdown]
    assert any(line.startswith("⬜️ **Train a model**") for line in lines), lines
    assert not any("so far" in line for line in lines)
    demo = app_env / "data" / "demo"
    on_demo = [r for r in list_runs(app_env) if Path(r.data).resolve() == demo.resolve()]
    at = AppTest.from_file(str(ROOT / "pages" / "home.py"), default_timeout=120)
    at.session_state["dataset_path"] = str(demo)
    at.run()
    said = f"{len(on_demo)} run{'s' if len(on_demo) != 1 else ''} on this dataset so far"
    assert any(m.value.startswith("✅ **Train a model**") and said in m.value for m in at.markdown)


def test_predict_says_the_suggested_threshold_and_goes_back_to_it(app_env):
    """Issue 24, item 22: the slider has no mark, so the suggestion is said and one click away once moved."""
    at = page("predict").run()
    slider = at.slider(key="tag_threshold")
    suggested = slider.value
    assert any(f"{suggested:.2f} is the tagging model's suggested threshold" in c.value for c in at.caption)
    slider.set_value(round(suggested - 0.2 if suggested >= 0.5 else suggested + 0.2, 2)).run()
    reset = at.button(key="threshold_reset")
    assert f"Back to the suggested {suggested:.2f}" in reset.label
    reset.click().run()
    assert not at.exception
    assert at.slider(key="tag_threshold").value == pytest.approx(suggested)


def test_a_first_visit_trains_in_three_steps_with_the_settings_under_advanced(app_env, tmp_path, monkeypatch):
    """Issue 24: simple mode. With no run yet the Train page asks for the model only and says what Start will do;
    Advanced shows every setting."""
    import shutil
    fresh = tmp_path / "artifacts"
    shutil.copytree(app_env / "data" / "demo", fresh / "data" / "demo")
    monkeypatch.setenv("LANDMARK_ARTIFACTS", str(fresh))
    at = page("train").run()
    assert not at.exception
    assert not [n for n in at.number_input if n.label == "Epochs"]
    assert not at.slider
    assert any(m.value.startswith("Trains **efficientnet_lite2** on `demo` with its defaults") for m in at.markdown)
    assert at.button(key="FormSubmitter:train_form-Start")
    at.toggle(key="train_advanced").set_value(True).run()
    labels = {n.label for n in at.number_input} | {s.label for s in at.selectbox} | {s.label for s in at.slider}
    assert {"Epochs", "Learning rate", "Batch size", "Image size (px)", "Optimizer", "Augmentation strength",
            "Weight decay", "Training processes"} <= labels


def test_train_page_shows_a_finished_background_sweep_and_its_suggestion(app_env):
    """Issue 24, item 1: the page draws the sweep that ran in the background (no page-greying call)."""
    from landmark_core.runs.config import TrainConfig
    from landmark_core.training.lr_finder import Sweep
    demo = str(app_env / "data" / "demo")
    sweep = Sweep.of(demo, "scratch_cnn")
    result = sweep.run_here(TrainConfig(data=demo, model="scratch_cnn", image_size=32, batch_size=8), steps=12)
    at = page("train")
    at.session_state["dataset_path"] = demo
    at.run()
    at.selectbox[0].set_value("scratch_cnn").run()
    assert not at.exception
    try:
        said = [m.value for m in at.markdown if "learning rate" in m.value.lower() or "No clear descent" in m.value]
        assert said
        assert f"{result.suggestion:.1e}" in said[0] if result.suggestion else "No clear descent" in said[0]
    finally:
        import shutil
        shutil.rmtree(sweep.folder)  # the artifacts folder is shared by the page tests


def test_compare_writes_shares_and_missing_values_as_every_page_does(app_env, run_on_another_dataset):
    """Issue 24, item 15: 94.2%, not 0.9417 beside 94.17%; a dash, never "None"."""
    import json as _json
    evaluation = _json.loads((run_on_another_dataset / "evaluation.json").read_text())
    evaluation.pop("top5")
    (run_on_another_dataset / "evaluation.json").write_text(_json.dumps(evaluation))
    at = page("compare")
    at.session_state["compare-other-datasets"] = True
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert "None" not in table.to_string()
    assert "nan" not in table.to_string().lower()
    assert all(v == "–" or (v.endswith("%") and len(v.split(".")[-1]) == 2) for v in table["test top-1"])
    assert "–" in list(table.loc[table["run"] == run_on_another_dataset.name, "test top-5"])


def _chart_specs(at) -> list[dict]:
    import json as _json
    return [_json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def _encodings(spec: dict):
    for part in [spec, *spec.get("layer", [])]:
        for channel, encoding in (part.get("encoding") or {}).items():
            if isinstance(encoding, dict):
                yield channel, encoding


def test_charts_have_titled_formatted_axes_and_whole_labels(app_env):
    """Issue 24, items 14, 17 and 18: no Altair default titles ("Count of Records", a field named x or y), whole
    epochs on epoch axes, and class labels that are not cut at Vega's default 180 px."""
    from landmark_core.runs.run import list_runs
    finished = next(r for r in list_runs(app_env) if r.state == "finished")
    pages = {"explore": page("explore"), "evaluate": page("evaluate"), "train": page("train")}
    pages["train"].session_state["live_run_select"] = finished.run_id
    for name, at in pages.items():
        at.run()
        assert not at.exception, name
        for spec in _chart_specs(at):
            for channel, encoding in _encodings(spec):
                if channel not in ("x", "y"):
                    continue
                field = encoding.get("field") or ""
                aggregate = encoding.get("aggregate")
                assert field not in ("x", "y"), (name, encoding)
                if aggregate == "count":
                    assert encoding.get("title"), (name, encoding)  # else Vega writes "Count of Records"
                if field == "epoch":
                    assert encoding["axis"]["format"] == "d", (name, encoding)
                if field in ("label", "landmark") and encoding.get("type") == "nominal":
                    assert encoding["axis"].get("labelLimit", 0) >= 240 or encoding["axis"].get("labelLimit") == 0, (name, encoding)


def test_train_page_says_what_a_run_will_cost_before_it_starts(app_env):
    """Issue 27, item 2: the time on this machine from a few training steps timed just now, for the model chosen,
    with the epochs the dataset's size gives a scratch run."""
    from landmark_core.runs.config import TrainConfig
    from landmark_core.training.prepare import resolved_for_dataset
    at = page("train").run()
    at.selectbox[0].set_value("scratch_cnn").run()
    assert not at.exception
    cost = next(m.value for m in at.markdown if "Time on this machine" in m.value)
    epochs = resolved_for_dataset(TrainConfig(data=str(app_env / "data" / "demo"), model="scratch_cnn"))[0].epochs
    assert f"{epochs} epochs of about" in cost
    assert "measured on this machine just now" in cost
    assert "in all" in cost
    assert "decoding the photos" in cost
