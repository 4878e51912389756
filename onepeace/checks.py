"""Input checks that read tensor *values*, and the switch that turns them off in the training loop.

Reading a value of a device tensor (``int(t.max())``, ``bool(t.any())``, ``.item()``) makes the host
wait until the device has computed it: on a GPU that drains the launch queue, so the CPU can no longer
run ahead of the kernels. Shape and dtype checks are free and always run; value checks (index ranges,
token ids, clip lengths, equal batch sizes across ranks) run by default, so the public API reports a
bad input clearly. The trainer switches them off because its batches are built and validated on the
host by the data pipeline; ``train.debug_checks: true`` (or ``ONEPEACE_VALUE_CHECKS=1`` in the
environment) switches them back on to chase a bad batch.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_enabled = os.environ.get("ONEPEACE_VALUE_CHECKS", "1") != "0"
_forced = os.environ.get("ONEPEACE_VALUE_CHECKS") == "1"


def value_checks() -> bool:
    """Whether checks that read tensor values should run."""
    return _enabled


def set_value_checks(enabled: bool) -> None:
    """Turn value checks on or off for this process (``ONEPEACE_VALUE_CHECKS=1`` keeps them on)."""
    global _enabled
    _enabled = bool(enabled) or _forced


@contextlib.contextmanager
def value_checks_set(enabled: bool) -> Iterator[None]:
    global _enabled
    before = _enabled
    set_value_checks(enabled)
    try:
        yield
    finally:
        _enabled = before
