"""Log set-up shared by the worker's programs: one line per event on stdout, tagged by program.

Log lines carry lifecycle events and error codes only, never workflow content or outputs.
"""

from __future__ import annotations

import logging
import sys


def setup(program: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"[{program}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )
