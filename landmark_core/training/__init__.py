"""Training: a run's decoded splits, the loop that fires named events, its side effects as callbacks,
checkpoints, several processes, the linear probe, the learning-rate sweep and the cost estimate."""
