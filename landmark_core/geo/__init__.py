"""Places: the landmarks' positions and the world's towns, offline."""
