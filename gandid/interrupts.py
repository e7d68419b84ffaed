"""SIGTERM stops a run as Ctrl-C does: torchrun ending its other processes when one fails, a job
scheduler's time limit and a plain ``kill`` then leave the run recorded as interrupted, with how to
resume, instead of a run.json that says 'running' forever."""
from __future__ import annotations

import contextlib
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM (torchrun ending a group, a job scheduler, `kill`): stopped as Ctrl-C stops a run, so the
    interruption is recorded and the run resumes."""


@contextlib.contextmanager
def sigterm_interrupts():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread (a no-op elsewhere)."""
    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut short recording the first
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (an embedding program): leave its signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
