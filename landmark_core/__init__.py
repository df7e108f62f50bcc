"""landmark_core: recognise landmarks in photos and tag them with a place.

Modules: ``data`` (datasets, decode cache, batches), ``demo`` (built-in demo
set), ``download`` (the real 50-class set), ``models`` (registry), ``train``,
``evaluate``, ``export``, ``predict``, ``places`` (coordinates), ``tagging``
and ``cli``. Nothing here imports streamlit.
"""
__version__ = "0.1.0"
