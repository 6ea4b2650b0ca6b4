"""The fleet's Redis (STATE_URL): its secret URL, the start that needs it, the replay memory."""

import pytest

from services.core import config, errors
from services.jobs.envelopes import ReplayGuard
from services.jobs.fleet.state_store import StateStore
from tests.container.test_entrypoint import run_entrypoint
from tests.stack import free_port

SECRET = "hunter2-in-the-url"


def settings(url, **env):
    return config.load({"ENCRYPTION_REQUIRED": "0", "STATE_URL": url, **env})


def test_an_unreachable_redis_stops_the_start_naming_the_variable_not_its_value():
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    result = run_entrypoint({"LAUNCH_MODE": "api", "ENCRYPTION_REQUIRED": "0", "STATE_URL": url})
    assert result.returncode == 1, result.stderr
    assert "STATE_URL" in result.stderr and "does not answer" in result.stderr
    assert SECRET not in result.stderr + result.stdout and "supervisord" not in result.stdout
    checked = run_entrypoint({"LAUNCH_MODE": "api", "ENCRYPTION_REQUIRED": "0", "STATE_URL": url}, "--check")
    assert checked.returncode == 0 and "state_url=(set)" in checked.stdout and SECRET not in checked.stdout


@pytest.mark.parametrize("url", [f"http://{SECRET}@host", f"redis://{SECRET}@host:port/0"])
def test_a_malformed_state_url_is_refused_without_showing_it(url):
    with pytest.raises(config.ConfigError) as refused:
        settings(url)
    assert "STATE_URL" in str(refused.value) and SECRET not in str(refused.value)


def test_the_replay_memory_is_shared_by_every_worker_on_the_redis(redis_server):
    shared = settings(redis_server.url, STATE_PREFIX="replay-shared")
    first, second = ReplayGuard(60, StateStore(shared)), ReplayGuard(60, StateStore(shared))
    first.check(b"e" * 32, b"n" * 24, {})
    with pytest.raises(errors.ReplayedRequest):
        second.check(b"e" * 32, b"n" * 24, {})
    other_fleet = ReplayGuard(60, StateStore(settings(redis_server.url, STATE_PREFIX="replay-other")))
    other_fleet.check(b"e" * 32, b"n" * 24, {})  # another prefix, another fleet


def test_without_redis_a_worker_still_refuses_what_it_saw_itself():
    down = StateStore(settings(f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(errors.StateUnavailable) as unavailable:
        down.ping()
    assert unavailable.value.code == "state_unavailable" and not down.up
    guard = ReplayGuard(60, down)
    guard.check(b"e" * 32, b"n" * 24, {})
    with pytest.raises(errors.ReplayedRequest):
        guard.check(b"e" * 32, b"n" * 24, {})
