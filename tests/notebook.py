"""Run a bundle's inference notebook as Kaggle would, offline: every code cell in one namespace,
the repository not importable, the network closed, Kaggle's input and working folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUNNER = """
import importlib.util, json, sys
assert importlib.util.find_spec("competitions") is None, "the repository is importable"
namespace = {"__name__": "__main__"}
for cell in json.load(open(sys.argv[1]))["cells"]:
    if cell["cell_type"] == "code":
        exec(compile("".join(cell["source"]), "<cell>", "exec"), namespace)
"""


def run_offline(notebook: Path, kaggle: Path, scratch: Path) -> bytes:
    """Run ``notebook`` with ``kaggle/input`` as its inputs; returns the ``submission.csv`` it
    wrote into ``kaggle/working`` (the test fails with the notebook's error otherwise)."""
    (kaggle / "working").mkdir(parents=True, exist_ok=True)
    (scratch / "runner.py").write_text(RUNNER)
    closed = "http://127.0.0.1:9"  # the network is unavailable
    env = {"PATH": os.environ["PATH"], "HOME": str(kaggle), "HTTP_PROXY": closed}
    env |= {"HTTPS_PROXY": closed, "KAGGLE_INPUT_DIR": str(kaggle / "input")}
    env |= {"KAGGLE_WORKING_DIR": str(kaggle / "working"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(scratch / "runner.py"), str(notebook)],
        cwd=kaggle / "working", env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return (kaggle / "working" / "submission.csv").read_bytes()
