"""Pretraining on DeepSpeed: ``python -m onepeace.train`` (see cli.py)."""
