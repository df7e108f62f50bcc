"""landmark_core: recognise landmarks in photos and tag them with a place.

Layers, each importing only the ones before it (README "Architecture"):
foundations (``errors``, ``fileio``, ``locations``, ``transforms``, ``images``,
``places`` ...), ``models``, ``config`` and ``runs``, ``data`` (a package:
index, decode, augment, quality), ``prepare``/``checkpoints``/``engine``/
``callbacks``, ``evaluate``/``export``, ``pipeline``, then ``predict``,
``tagging``, ``insights`` and ``cli``. Nothing here imports streamlit.
"""
__version__ = "0.1.0"
