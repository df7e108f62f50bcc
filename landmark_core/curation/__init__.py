"""Curation: a dataset cleaned with a trained run, and a tag report's review turned into training photos."""
