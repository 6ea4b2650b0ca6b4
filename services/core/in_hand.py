"""The work a process accepted and has not handed over yet, so that a drain can wait for it and
its deadline can cut it.

Each piece is a file in RUN_DIR/work named `<pid>-<n>-<kind>` (made when the work is accepted,
removed when it is handed over: a job answered, an async result fetched, a download ended),
which PID 1 counts (services.core.drain.busy) without asking any process. A piece may say how
to cut it: a job stops in ComfyUI and answers `shutting_down`; what says nothing is let go.
Every process that holds work watches the drain state and cuts what it holds once it is
`stopping`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Callable

from services.core import background, drain, errors
from services.core.run_dir import RunDir

log = logging.getLogger("worker.drain")
WATCH_S = 0.25  # how often a process looks for the drain's end
CUT = errors.ShuttingDown(
    "the worker stopped before the job ended (its drain's DRAIN_TIMEOUT_S passed); send it again"
)


def waits_for_its_job() -> None:
    """A cut rule: the drain's deadline does nothing to this piece; the job it carries is cut
    through its own piece (the pipeline's), and this one is let go once the job answered."""


class Piece:
    def __init__(self, owner: InHand, path: str, cut: Callable[[], None] | None) -> None:
        self._owner = owner
        self.path = path
        self.cut = cut

    def release(self) -> None:
        """Handed over (idempotent)."""
        self._owner._release(self)

    def __enter__(self) -> Piece:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class InHand:
    def __init__(self, layout: RunDir) -> None:
        self.layout = layout
        self._numbers = itertools.count()
        self._pieces: dict[str, Piece] = {}
        self._lock = threading.Lock()
        self._cut_done = False
        os.makedirs(layout.work_dir, mode=0o700, exist_ok=True)
        self._pause = threading.Event()
        background.loop("drain-watch", self._watch_round, WATCH_S)

    def hold(self, kind: str, cut: Callable[[], None] | None = None) -> Piece:
        """A piece of work accepted now; `cut`: how the drain's deadline stops it, a named rule
        (a job's stop, `waits_for_its_job`; None: it is let go, and dies with the process)."""
        path = os.path.join(self.layout.work_dir, f"{os.getpid()}-{next(self._numbers)}-{kind}")
        piece = Piece(self, path, cut)
        with self._lock:
            self._pieces[path] = piece
        with open(path, "x"):
            pass
        return piece

    def count(self) -> int:
        with self._lock:
            return len(self._pieces)

    def cut(self) -> int:
        """Stop what is held: each job is told to stop (it lets go when it answered), the rest
        is let go at once."""
        with self._lock:
            pieces = list(self._pieces.values())
        for piece in pieces:
            if piece.cut is None:
                piece.release()
            else:
                piece.cut()
        return len(pieces)

    def _release(self, piece: Piece) -> None:
        with self._lock:
            if self._pieces.pop(piece.path, None) is None:
                return
        with contextlib.suppress(FileNotFoundError):
            os.remove(piece.path)

    def _watch_round(self) -> None:
        """Cut once the drain is `stopping`; again for work that arrived after (a poll's result)."""
        self._pause.wait(WATCH_S)
        current = drain.state(self.layout)
        if current is None or not current.stopping:
            self._cut_done = False
        elif self.count():
            cut = self.cut()
            if not self._cut_done:
                log.warning("the drain's deadline passed: cut %d piece(s) of work in hand", cut)
            self._cut_done = True
