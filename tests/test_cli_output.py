"""What the command line prints besides results: warnings yes, DEBUG lines and library bars no."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV_KEYS = ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")

# After the CLI's set-up: a library logger at DEBUG (as bm25s sets its own), a warning, an info
# line, whether transformers will draw its progress bars, and tqdm's default.
PROBE = """
import json, logging, os, sys
from knowgate.cli.app import configure_output
configure_output(verbose=sys.argv[1] == "verbose")
chatty = logging.getLogger("chatty_library")
chatty.setLevel(logging.DEBUG)
chatty.debug("debug line")
chatty.info("info line")
chatty.warning("warning line")
from transformers.utils import logging as hf_logging
from tqdm import tqdm
print(json.dumps({
    "env": {k: os.environ.get(k) for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE")},
    "transformers_bars": hf_logging.is_progress_bar_enabled(),
    "tqdm_default_disabled": tqdm(range(1)).disable,
}))
"""


def probe(mode: str, **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**clean, **env},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_normal_use_shows_warnings_but_no_debug_lines_or_library_bars() -> None:
    out, stderr = probe("quiet")
    assert "WARNING chatty_library: warning line" in stderr
    assert "debug line" not in stderr and "info line" not in stderr
    assert out["env"] == {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    assert out["transformers_bars"] is False and out["tqdm_default_disabled"] is True


def test_verbose_shows_info_and_library_bars_but_still_no_debug() -> None:
    out, stderr = probe("verbose")
    assert "INFO chatty_library: info line" in stderr and "warning line" in stderr
    assert "debug line" not in stderr
    assert out["env"] == {"HF_HUB_DISABLE_PROGRESS_BARS": None, "TQDM_DISABLE": None}
    assert out["transformers_bars"] is True and out["tqdm_default_disabled"] is False


@pytest.mark.parametrize("value", ["0", "false"])
def test_a_users_own_setting_wins(value: str) -> None:
    out, _ = probe("quiet", HF_HUB_DISABLE_PROGRESS_BARS=value)
    assert out["env"]["HF_HUB_DISABLE_PROGRESS_BARS"] == value
    assert out["transformers_bars"] is True
