from pathlib import Path

import pandas as pd
import streamlit as st

from landmark_core.core.errors import LandmarkError
from landmark_core.core.locations import artifacts_dir
from landmark_core.geo.places import display_name, gazetteer
from landmark_core.curation.review import REVIEWED_OUTCOMES, Review, Verdict, find_reports
from landmark_core.tagging.decision import STATUS_MEANINGS, TagStatus
from landmark_core.core.images import read_photo
from pages.common import assessment_for, explanation_for, show_error

PER_PAGE = 12
RIGHT, NOT_A_LANDMARK, NEW_CLASS = "✔ the tag is right", "✖ not a landmark", "➕ a new class…"

st.title("✅ Review tags")
st.caption("Go through a tag report written by `landmark tag`: confirm a tag, correct it to another class or a new "
           "one, or mark a photo *not a landmark*. Each verdict copies the photo into the model's dataset "
           "(`train/<class>/` or `unknown/`; your photo stays where it is) and can be undone. **Retrain** then "
           "trains a new model with the same settings and re-tags the photos the model decided.")

@st.cache_data(ttl=30, show_spinner=False)
def reports_here(folders: tuple[str, ...]) -> list[Path]:
    return find_reports(folders)


found = reports_here((str(Path.cwd()), str(artifacts_dir())))
typed = st.text_input("Tag report (the CSV that `landmark tag` wrote)", key="review_report",
                      placeholder=str(found[0]) if found else "tagged/tag-report.csv")
if not typed and found:
    typed = st.selectbox("…or one found here", [str(path) for path in found], key="review_found")
if not typed:
    st.info("Tag a folder of photos first: `landmark tag RUN PHOTOS --out tagged` writes `tagged/tag-report.csv`.")
    st.stop()
try:
    review = Review(typed)
    run, dataset_root = review.run, review.dataset_root
    items = review.items()
    places = gazetteer(dataset_root)  # a damaged places.csv shows here, with its line
except (LandmarkError, OSError) as error:
    show_error(error)
    st.stop()

if not run.exported:
    st.error(f"The model {run.id} that made this report has no exported model any more.")
    st.stop()
classes = list(run.export_meta["classes"])
judged = review.verdicts()
by_outcome = {outcome: [item for item in items if item.status == outcome] for outcome in REVIEWED_OUTCOMES}
st.caption(f"Tagged by **{run.id}** · dataset `{dataset_root}` · {len(judged)} verdicts so far")
outcome = st.segmented_control(
    "Outcome", [o for o in REVIEWED_OUTCOMES if by_outcome[o]] or list(REVIEWED_OUTCOMES), key="review_outcome",
    format_func=lambda o: f"{o} ({len(by_outcome[o])})", default=next((o for o in REVIEWED_OUTCOMES if by_outcome[o]), None))
if outcome:
    shown = by_outcome[outcome]
    st.caption(f"{STATUS_MEANINGS[outcome].capitalize()}. The least certain first; photos judged already come last.")
    pages = max(1, -(-len(shown) // PER_PAGE))
    page = st.number_input("Page", 1, pages, 1, key=f"review_page_{outcome}") if pages > 1 else 1
    explain = st.toggle("Show where the model looked (Grad-CAM)", key="review_gradcam")
    for item in shown[(page - 1) * PER_PAGE: page * PER_PAGE]:
        st.divider()
        name = Path(item.file).name
        photo, verdicts, actions = st.columns([1, 1.3, 1.3])
        try:
            data = read_photo(item.file)
            assessment = assessment_for(run.path, data)
        except (LandmarkError, OSError) as error:
            photo.caption(name)
            show_error(error)
            continue
        photo.image(data, caption=name, width="stretch")
        with verdicts:
            st.markdown("\n".join(f"{rank}. {display_name(p.label)} — {p.probability:.1%}"
                                  for rank, p in enumerate(assessment.predictions[:3], 1)))
            if assessment.familiarity is not None:
                st.caption(f"familiarity {assessment.familiarity:.2f} · margin {item.doubt:+.3f}")
            if explain:
                overlay, explained, _ = explanation_for(run.path, data)
                st.image(overlay, caption=f"Grad-CAM · {display_name(explained)}", width="stretch")
        with actions:
            if item.verdict:
                said = item.verdict
                st.success(f"**{said['verdict'].replace('_', ' ')}**"
                           + (f": {display_name(said['class'])}" if said.get("class") else "") + f" → `{said['copy']}`")
                if said.get("class") and places.place_for(said["class"]) is None:
                    st.caption("This class has no place yet: tags would carry its name only. Find it on **Explore "
                               "dataset** (search a town or click on the map).")
                if st.button("Undo", key=f"undo-{item.file}"):
                    try:
                        review.undo(item.file)
                        st.rerun()
                    except (LandmarkError, OSError) as error:
                        show_error(error)
                continue
            options = ([RIGHT] if item.status == TagStatus.TAGGED else []) + [NOT_A_LANDMARK] + \
                [c for c in classes if not (c == item.prediction and item.status == TagStatus.TAGGED)] + [NEW_CLASS]
            choice = st.selectbox("Verdict", options, key=f"verdict-{item.file}", index=None,
                                  placeholder="What does the photo show?",
                                  format_func=lambda c: c if c in (RIGHT, NOT_A_LANDMARK, NEW_CLASS) else display_name(c))
            new_class = st.text_input("New class folder name", key=f"new-class-{item.file}") \
                if choice == NEW_CLASS else ""
            if st.button("Save verdict", key=f"save-{item.file}", disabled=choice is None):
                try:
                    if choice == RIGHT:
                        review.judge(item.file, Verdict.CONFIRMED)
                    elif choice == NOT_A_LANDMARK:
                        review.judge(item.file, Verdict.NOT_A_LANDMARK)
                    else:
                        review.judge(item.file, Verdict.CORRECTED, new_class if choice == NEW_CLASS else choice,
                                     new_class=choice == NEW_CLASS)
                    st.rerun()
                except (LandmarkError, OSError) as error:
                    show_error(error)

st.divider()
st.subheader("Teach the model")
last = st.session_state.get("review_result")
if last and last[0] == str(review.report_path):
    result = last[1]
    st.success(f"Retrained as **{result.run.name}** and re-tagged the photos the model decided.")
    st.dataframe(pd.DataFrame([{"outcome": status, "before": result.before[status], "after": result.after[status]}
                               for status in result.before if result.before[status] or result.after[status]]),
                 hide_index=True, key="review_counts")
    if result.changes:
        st.dataframe(pd.DataFrame([{"photo": Path(c["file"]).name, "before": f"{c['before']} {c['before_landmark']}",
                                    "after": f"{c['after']} {c['after_landmark']}"} for c in result.changes]),
                     hide_index=True, key="review_changes")
if not judged:
    st.caption("Give a verdict on some photos first: retraining learns from them.")
else:
    st.caption(f"Trains a new run with the settings of {run.id} on its dataset, now with your {len(judged)} verdicts; "
               "the old run stays. The report then lists the new tags.")
    if st.button("Undo the last verdict", key="undo_last_verdict"):
        try:
            review.undo()
            st.rerun()
        except (LandmarkError, OSError) as error:
            show_error(error)
if st.button("Retrain and re-tag", type="primary", disabled=not judged, key="retrain"):
    bar = st.progress(0.0, text="Training…")
    try:
        result = review.retrain(progress=lambda stage, done, total: bar.progress(
            min(1.0, done / total) if total else 0.0, text=f"{stage} {done}/{total}"))
        st.session_state["review_result"] = (str(review.report_path), result)
        st.rerun()
    except (LandmarkError, OSError) as error:
        show_error(error)
