"""Landmark Tagger: `streamlit run app.py`.

Builds the navigation and the dataset chooser shared by every page; each page
lives in pages/ and calls landmark_core for everything it shows.
"""
import streamlit as st

from pages.common import dataset_sidebar

st.set_page_config(page_title="Landmark Tagger", page_icon="🗺️", layout="wide")

SECTIONS = {
    "": [st.Page("pages/home.py", title="Start", icon="🏠", default=True)],
    "Data": [st.Page("pages/explore.py", title="Explore dataset", icon="🔎")],
    "Models": [
        st.Page("pages/train.py", title="Train", icon="🏋️"),
        st.Page("pages/evaluate.py", title="Evaluate", icon="📊"),
        st.Page("pages/compare.py", title="Compare runs", icon="⚖️"),
    ],
    "Use": [st.Page("pages/predict.py", title="Predict & tag", icon="📍"),
            st.Page("pages/review.py", title="Review tags", icon="✅")],
}
# The menu is drawn here, not by st.navigation: with client.showSidebarNavigation off (it keeps Streamlit from
# listing the pages/ folder's modules for a moment on the first load) Streamlit draws no menu of its own.
navigation = st.navigation(SECTIONS, position="hidden")
with st.sidebar:
    for section, pages in SECTIONS.items():
        if section:
            st.caption(section)
        for page in pages:
            st.page_link(page)
dataset_sidebar()
navigation.run()
