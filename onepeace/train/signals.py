"""Stopping on SIGTERM/SIGUSR1 (preemption): remember the signal, checkpoint at the next step, exit."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Remembers SIGTERM/SIGUSR1; the loop checkpoints and exits at the next step boundary. Installed
    first thing, so a signal during start-up is remembered too instead of killing the rank.

    :meth:`restore` puts back the handlers it replaced. The trainer's CLI restores them when it returns:
    a process that goes on after it (a test, a notebook, a script that then builds shards) must not keep
    handlers that only take note, or whatever it starts next can no longer be terminated.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
