"""Offload under gevent, as gunicorn's worker runs it: work goes to a pool thread from the hub,
and an offload from a pool thread runs right there instead of making that thread a hub."""

import subprocess
import sys

SCRIPT = """
from gevent import monkey
monkey.patch_all()
import threading
from gevent import get_hub
from gevent._hub_local import get_hub_if_exists
from services.core import offload

hub_thread = monkey.get_original("_thread", "get_ident")()
native = monkey.get_original("_thread", "get_ident")

def inner():
    return native()

def outer():
    ran_on = offload.offload(inner)  # from a pool thread: inline, on this very thread
    return native(), ran_on, get_hub_if_exists() is None

thread, inner_thread, no_hub = offload.offload(outer)
print(thread != hub_thread, inner_thread == thread, no_hub)
"""


def test_an_offload_from_a_pool_thread_runs_inline_without_a_second_hub():
    answer = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["True", "True", "True"]
