"""Tables the dashboard draws: training curves, live progress, confusion cells, run comparisons and
dataset exploration."""
