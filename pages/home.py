from pathlib import Path

import streamlit as st

from landmark_core.runs import RunState
from landmark_core.runs.run import list_runs
from pages.common import current_dataset, format_percent, format_seconds, trained_on

st.title("🗺️ Landmark Tagger")
st.write("Recognise the landmark in a photo, then tag the photo with the landmark's name and location. "
         "Train a CNN from scratch or fine-tune a pretrained one, see where it fails, and try it on your own photos.")

dataset = current_dataset()
every_run = list_runs()
runs = [r for r in every_run if trained_on(r, dataset)]  # the checklist is about the dataset in use
finished = [r for r in runs if r.state == RunState.FINISHED]

st.subheader("What to do next")
if dataset is None:
    pick = "Use **Create demo data** in the sidebar (a few seconds), download the real 50-class set, or point to your own folder."
else:
    pick = f"Working with `{dataset.name}`; switch in the sidebar (demo, the real 50-class set or your own folder)."
steps = [
    (dataset is not None, "Pick a dataset", pick),
    (bool(runs), "Train a model", "Open **Train**, keep the defaults and press **Start**: watch the loss and accuracy live."
     + (f" {len(runs)} run{'s' if len(runs) != 1 else ''} on this dataset so far." if runs else "")),
    (bool(finished), "Check it", "**Evaluate** shows the confusion matrix, per-class scores and the photos it gets most wrong."),
    (bool(finished), "Use it", "**Predict & tag** takes your photos and shows the top 5 landmarks with their place on a map."),
]
for done, title, text in steps:
    st.markdown(f"{'✅' if done else '⬜️'} **{title}** — {text}")

if dataset:
    st.caption(f"Current dataset: `{dataset}`")
if every_run:
    st.subheader("Recent runs")
    st.dataframe([{"run": r.run_id, "dataset": Path(r.data).name if isinstance(r.data, str) else "?", "state": r.state, "model": r.model,
                   "epochs": f"{r.epoch}/{r.epochs}", "best val acc": format_percent(r.best_val_acc),
                   "test top-1": format_percent(r.test_acc), "time": format_seconds(r.duration_s)}
                  for r in every_run[:5]], hide_index=True)
