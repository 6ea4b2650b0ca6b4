import os
import signal

import pytest

from tests.stack import STANDIN, Backend, Stack, real_backend


@pytest.fixture(scope="session", autouse=True)
def stop_every_stack():
    """A failed fixture or a SIGTERM to the test run must not leave supervisord trees behind."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)
    for stack in list(Stack.running):
        stack.stop()


_RUN_DIR = {"now": ""}  # the RUN_DIR of the test being run (own_run_dir)


@pytest.fixture(scope="session", autouse=True)
def no_machine_run_dir(tmp_path_factory):
    """No test reads or writes the machine's RUN_DIR (/tmp/comfy-worker by default, where a
    `make run` stopped with Ctrl-C leaves its drain marker): every settings object a test builds
    without RUN_DIR gets a temporary one, and so does every process a test starts."""
    from services.core import config

    real = config.load
    _RUN_DIR["now"] = str(tmp_path_factory.mktemp("run-dir"))

    def load(environ=None):
        env = os.environ if environ is None else environ
        return real(env if "RUN_DIR" in env else {**env, "RUN_DIR": _RUN_DIR["now"]})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "load", load)
        patch.setenv("RUN_DIR", _RUN_DIR["now"])
        yield


@pytest.fixture(autouse=True)
def own_run_dir(no_machine_run_dir, tmp_path_factory):
    """Each test its own (a module's fixtures share the session's)."""
    session, _RUN_DIR["now"] = _RUN_DIR["now"], str(tmp_path_factory.mktemp("run-dir"))
    yield
    _RUN_DIR["now"] = session


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="session", params=[STANDIN.name, pytest.param("real", marks=pytest.mark.real)])
def backend(request) -> Backend:
    """Tests that take `backend` run against the stand-in in make test and the real ComfyUI in
    make test-real."""
    if request.param == STANDIN.name:
        return STANDIN
    try:
        return real_backend()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the test session (each parallel runner its own); tests that
    kill Redis start their own."""
    from tests.redis_server import RedisServer

    try:
        server = RedisServer().start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def otlp(monkeypatch):
    """A real OTLP/HTTP receiver; this process's tracing exports to it once a test calls
    `tracing.setup` with its endpoint, and stops (everything exported) at the test's end."""
    from services.core import tracing
    from tests.otlp_receiver import OtlpReceiver

    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the SDK's own: export within 0.1 s
    receiver = OtlpReceiver()
    yield receiver
    tracing.close()
    receiver.close()
