"""Tagging: predictions from an exported run, the tag decision, metadata written into photos, and the
batch run over a library with its report."""
