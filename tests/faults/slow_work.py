"""A picklable cache work function that takes its time (for the kill test's worker processes)."""

import time
from pathlib import Path


def slow(entry, out: Path) -> dict:
    time.sleep(0.3)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{entry.id}.txt").write_text(entry.id)
    return {"id": entry.id}
