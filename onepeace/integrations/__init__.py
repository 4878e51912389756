"""Bridges to other tools and formats (the official ONE-PEACE checkpoints)."""
