"""Stopping on SIGTERM/SIGUSR1 (preemption): remember the signal, checkpoint at the next step, exit."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Remembers SIGTERM/SIGUSR1; the loop checkpoints and exits at the next step boundary. Installed
    first thing, so a signal during start-up is remembered too instead of killing the rank."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
