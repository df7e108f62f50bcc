"""Landmark Tagger: `streamlit run app.py`.

Builds the navigation and the dataset chooser shared by every page; each page
lives in pages/ and calls landmark_core for everything it shows.
"""
import streamlit as st

from pages.common import dataset_sidebar

st.set_page_config(page_title="Landmark Tagger", page_icon="🗺️", layout="wide")

navigation = st.navigation({
    "": [st.Page("pages/home.py", title="Start", icon="🏠", default=True)],
    "Data": [st.Page("pages/explore.py", title="Explore dataset", icon="🔎")],
    "Models": [
        st.Page("pages/train.py", title="Train", icon="🏋️"),
        st.Page("pages/evaluate.py", title="Evaluate", icon="📊"),
        st.Page("pages/compare.py", title="Compare runs", icon="⚖️"),
    ],
    "Use": [st.Page("pages/predict.py", title="Predict & tag", icon="📍"),
            st.Page("pages/review.py", title="Review tags", icon="✅")],
})
dataset_sidebar()
navigation.run()
