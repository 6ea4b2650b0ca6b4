"""An envelope runs once: seen pairs and stale `ts` are refused within the window."""

import pytest

from services.core import errors
from services.jobs.envelopes import ReplayGuard

EPK, NONCE = b"k" * 32, b"n" * 24


def test_the_same_envelope_is_refused_within_the_window_and_forgotten_after():
    guard = ReplayGuard(600)
    guard.check(EPK, NONCE, {}, now=1000)
    with pytest.raises(errors.ReplayedRequest):
        guard.check(EPK, NONCE, {}, now=1599)
    guard.check(EPK, NONCE, {}, now=1601)  # the pair is forgotten; a `ts` would refuse it
    guard.check(EPK, b"m" * 24, {}, now=1601)  # another nonce is another request


@pytest.mark.parametrize(
    ("ts", "refused"), [(1000, False), (401, False), (1599, False), (399, True), (1601, True)]
)
def test_a_ts_outside_the_window_is_refused(ts, refused):
    guard = ReplayGuard(600)
    if refused:
        with pytest.raises(errors.ReplayedRequest, match="REPLAY_WINDOW_S"):
            guard.check(EPK, NONCE, {"ts": ts}, now=1000)
    else:
        guard.check(EPK, NONCE, {"ts": ts}, now=1000)


@pytest.mark.parametrize("ts", ["1000", True, float("nan"), [1]])
def test_a_ts_that_is_not_a_number_is_an_invalid_request(ts):
    with pytest.raises(errors.InvalidRequest):
        ReplayGuard(600).check(EPK, NONCE, {"ts": ts}, now=1000)
