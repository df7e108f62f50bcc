"""The decision's numbers: calibrated probabilities and the familiarity score of the open-set check."""
