"""Shipping a trained TRACE: the model card and the one-commit Hub upload (`python -m trainer.release`)."""
