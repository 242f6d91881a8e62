"""The layers (README "Layout"): the import-linter contracts in pyproject.toml hold, and the running web
app has not loaded torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_web_app_runs_without_loading_torch():
    # What a static graph cannot see: a package's __init__ run on the way to training.config.
    code = ("import sys, app.main; app.main.create_app(); "
            "loaded = {'torch', 'transformers', 'accelerate'} & set(sys.modules); assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
