"""Runs a script in a fresh Python process that sees several fake CPU devices.

`--xla_force_host_platform_device_count` is read when JAX starts its CPU backend, so tests that need
several devices run their script in a subprocess; the script prints one JSON object last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_on_fake_devices(script: str, devices: int, timeout: int = 600) -> dict:
    """The JSON object `script` prints on its last line, run with `devices` CPU devices."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
