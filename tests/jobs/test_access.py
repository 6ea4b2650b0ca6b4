"""The key file: what it takes, what it refuses (one line naming the line), and the worker that
does not start with a bad one."""

import subprocess
import sys

import pytest

from services.core import config
from services.core.config import ConfigError
from services.jobs import access
from tests.stack import ROOT

HASH = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def test_a_keygen_line_is_a_hash_only_and_names_its_token():
    token = access.new_token()
    line = access.line_for("ci", token, "jobs,models")
    assert token not in line
    [(digest, key)] = access.parse(line).items()
    assert digest == access.hash_of(token) and key == access.Key("ci", frozenset({"jobs", "models"}))


def test_limits_comments_and_blank_lines():
    keys = access.parse(
        f"# the fleet's keys\n\nci {HASH} jobs jobs=4  # the CI\nteam {OTHER} jobs,models download_gb_per_day=1.5\n"
    )
    assert keys[HASH[7:]].max_jobs == 4 and keys[HASH[7:]].download_bytes_per_day is None
    assert keys[OTHER[7:]].download_bytes_per_day == 1_500_000_000


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (f"a {HASH} jobs\na {OTHER} jobs", "line 2: duplicate name 'a'"),
        (f"a {HASH} jobs,job", "line 1: unknown scope 'job' (scopes: jobs, models, admin, metrics)"),
        (
            f"a {access.TOKEN_PREFIX}{'x' * 43} jobs",
            "line 1: the key of 'a' must be stored as sha256:<64 hex digits> (make keygen) and this looks like a plaintext key",
        ),
        (f"a sha256:{'ab' * 31} jobs", "line 1: the key of 'a' must be stored as sha256:<64 hex digits>"),
        (f"a {HASH} jobs jobs=0", "line 1: bad limit 'jobs=0' (a number above 0)"),
        (f"a {HASH} jobs jobs=many", "line 1: bad limit 'jobs=many' (a number above 0)"),
        (
            f"a {HASH} jobs download_gb_per_day=inf",
            "line 1: bad limit 'download_gb_per_day=inf' (a number above 0)",
        ),
        (
            f"a {HASH} jobs download_gb_per_day=1e400",
            "line 1: bad limit 'download_gb_per_day=1e400' (a number above 0)",
        ),
        (
            f"a {HASH} jobs download_gb_per_day=nan",
            "line 1: bad limit 'download_gb_per_day=nan' (a number above 0)",
        ),
        (
            f"API_KEY {HASH} jobs",
            "line 1: 'API_KEY' is the name of the API_KEY variable's key; choose another",
        ),
        (f"a {HASH} jobs speed=3", "line 1: bad limit 'speed=3' (limits: jobs=<n>, download_gb_per_day=<x>)"),
        (f"a {HASH} jobs\nb {HASH} admin", "line 2: the same key as 'a'"),
        (f"a {HASH}", "line 1: a line is '<name> sha256:<64 hex digits> <scopes> [limits]'"),
    ],
)
def test_a_bad_line_is_named(text, error):
    with pytest.raises(ConfigError) as raised:
        access.parse(text)
    assert str(raised.value).startswith(f"API_KEYS_FILE {error}")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("jobs,job", "unknown scope 'job' (scopes: jobs, models, admin, metrics)"),
        ("jobs download_gb_per_day=inf", "bad limit 'download_gb_per_day=inf' (a number above 0)"),
    ],
)
def test_a_bad_file_stops_the_worker_at_start_with_one_line(tmp_path, line, error):
    path = tmp_path / "keys"
    path.write_text(f"ops {HASH} admin\nci {OTHER} {line}\n")
    env = {"PATH": "/usr/bin:/bin", "API_KEYS_FILE": str(path), "DRY_RUN": "1", "ENCRYPTION_REQUIRED": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "services.container.entrypoint", "--check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].endswith(f"configuration error: API_KEYS_FILE line 2: {error}")


def test_api_key_alone_is_one_key_with_every_scope_and_none_is_open():
    single = access.Keys(config.load({"API_KEY": "s3cret", "ENCRYPTION_REQUIRED": "0"}))
    assert single.identify("Bearer s3cret") == access.SINGLE and single.identify("Bearer s3cre") is None
    assert single.identify("s3cret") is None and single.identify(None) is None
    assert access.Keys(config.load({"ENCRYPTION_REQUIRED": "0"})).identify(None) == access.OPEN
