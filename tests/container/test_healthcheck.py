"""The image's HEALTHCHECK command against live stacks: healthy when the mode's program runs."""

import subprocess
import sys

from tests.stack import ROOT, Stack


def healthcheck(stack, **env):
    full = {**stack.env, **env}
    return subprocess.run(
        [sys.executable, "-m", "services.container.healthcheck"], cwd=ROOT, env=full, timeout=30
    ).returncode


def test_healthy_in_each_mode_and_unhealthy_without_the_program():
    for mode, path in (("api", "/healthz"), ("serverless", "/v2/LOCAL/health")):
        stack = Stack(mode).start(wait_for=("api" if mode == "api" else "handler",))
        try:
            stack.wait_http(path)
            assert healthcheck(stack) == 0
            other = "serverless" if mode == "api" else "api"
            assert healthcheck(stack, LAUNCH_MODE=other) == 1  # the other mode's program is not there
        finally:
            stack.stop()


def test_a_broken_configuration_is_unhealthy():
    assert (
        subprocess.run(
            [sys.executable, "-m", "services.container.healthcheck"],
            cwd=ROOT,
            env={"LAUNCH_MODE": "nope"},
            timeout=30,
        ).returncode
        == 1
    )
