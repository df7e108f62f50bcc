"""landmark_core: recognise landmarks in photos and tag them with a place.

A package per layer, each importing only the layers before it (README "Architecture", which
``tests/test_architecture.py`` enforces): ``core``, ``scoring``, ``geo``, ``models``, ``runs``, ``data``,
``training``, ``evaluation``, ``export``, then ``pipeline``, ``tagging`` and ``reports``, ``curation``, and the
interfaces ``cli``, ``serve``. Nothing here imports streamlit.
"""
__version__ = "0.1.0"
