"""Adapters that let other evaluation tools run onepeace models (imported only on demand)."""
