"""Prediction: turning model output into word-level IOB2 tags."""
