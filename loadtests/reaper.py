"""Stopping every load process the harness started, on every way out of the harness.

Runners and floods register here while their processes run. On a normal exit or an
exception that escapes to the interpreter, `atexit` stops them; on SIGTERM or SIGINT a
signal handler stops them first and then hands the signal to the handler that was
installed before (so SIGINT still raises KeyboardInterrupt and an unhandled SIGTERM
still ends the process with that signal). SIGKILL cannot be caught.

NOTE: the handlers are installed only from the main thread, because Python allows
`signal.signal` nowhere else; a harness that starts its first runner from another thread
relies on `atexit` and its own context managers.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any, Protocol

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stoppable(Protocol):
    run_id: str

    def stop(self) -> Any: ...


_active: dict[int, Stoppable] = {}
_previous_handlers: dict[int, Any] = {}
_installed = False


def register(item: Stoppable) -> None:
    """Track `item` until `unregister`; install the exit and signal handlers on first use."""
    _install()
    _active[id(item)] = item


def unregister(item: Stoppable) -> None:
    _active.pop(id(item), None)


def active_count() -> int:
    return len(_active)


def stop_all() -> None:
    """Stop every registered item, newest first; log and continue past any error."""
    # No lock: a signal handler runs in the main thread, possibly while that thread is in here.
    for key in reversed(list(_active)):
        item = _active.pop(key, None)
        if item is None:
            continue
        try:
            item.stop()
        except Exception:  # one failed stop must not leave the others running
            logger.exception("Run %s: stopping %r failed; its processes may be left over.", item.run_id, item)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    logger.warning("Received signal %d; stopping %d load process(es).", signum, len(_active))
    stop_all()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        # Re-deliver the signal with its default action, so the exit status still shows it.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        logger.warning("Load processes started outside the main thread; SIGTERM will not stop them.")
        return
    for signum in HANDLED_SIGNALS:
        _previous_handlers[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
