import signal

import pytest

from tests.stack import Stack


@pytest.fixture(scope="session", autouse=True)
def stop_every_stack():
    """A failed fixture or a SIGTERM to the test run must not leave supervisord trees behind."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    yield
    signal.signal(signal.SIGTERM, previous)
    for stack in list(Stack.running):
        stack.stop()


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt
