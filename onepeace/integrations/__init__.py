"""Bridges to other tools and formats: the official ONE-PEACE checkpoints, clip-benchmark (imported on demand)."""
