import subprocess
import sys

from tests.stack import ROOT


def test_make_smoke_passes_in_both_modes():
    result = subprocess.run(
        [sys.executable, "-m", "tests.smoke"], cwd=ROOT, capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok  ") == 7 and "smoke passed" in result.stdout
