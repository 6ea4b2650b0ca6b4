"""What a dead API process left, handed on at once: gunicorn's master runs this in a child
process when its worker dies (`child_exit` in services/api/gunicorn_conf.py). The master itself
loads no HTTP or Redis client: gevent patches those in the workers the master forks later.

The pod runs one gunicorn worker, so every prompt in its ComfyUIs was that process's, and nobody
will read them: the waiting ones are deleted and the running one interrupted. With STATE_URL,
its fleet jobs not started go back to the stream for any pod, and its running ones are answered
`worker_lost` at the next look of any pod (services.jobs.fleet.release).
"""

from __future__ import annotations

import sys

from services.comfy.client import ComfyClient
from services.core import config, errors, log_line
from services.core.config import Settings
from services.jobs import fleet
from services.jobs.fleet.state_store import Error, StateStore

PROGRAM = "api"


def main(argv: list[str]) -> int:
    settings = config.load_or_exit(PROGRAM)
    pid = int(argv[0])
    said = [] if settings.dry_run else _withdraw_prompts(settings)
    if settings.state_url:
        try:
            handed = fleet.release(StateStore(settings), settings, pid)
        except Error as exc:
            said.append(
                f"could not hand back its fleet jobs ({type(exc).__name__}); the claim timeout does it"
            )
        else:
            said.append(f"{handed} fleet job(s) it took and had not started went back to the queue")
    if said:
        log_line.write(PROGRAM, f"the API process {pid} is gone: " + "; ".join(said), settings.log_format)
    return 0


def _withdraw_prompts(settings: Settings) -> list[str]:
    said = []
    for number in range(settings.instance_count):
        client = ComfyClient(settings.instance(number).comfy_url)
        try:
            queue = client.queue()
            waiting, running = len(queue.get("queue_pending", [])), len(queue.get("queue_running", []))
            if waiting:
                client.clear_queue()
            if running:
                client.interrupt()
        except errors.WorkerError:
            continue  # down or restarting: its queue went with it
        if waiting or running:
            said.append(f"instance {number}: deleted {waiting} waiting prompt(s), interrupted {running}")
    return said


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
