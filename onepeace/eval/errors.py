"""The one error type evaluation raises for bad input; the CLI turns it into exit status 2."""

from __future__ import annotations


class EvalError(ValueError):
    """An evaluation cannot give a trustworthy number; the message names the set, file or sample."""
