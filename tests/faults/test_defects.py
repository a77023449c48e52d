"""The defects a hostile user found (issue "Faults and bad input"): each one a test that fails on
the code before the fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.competition import load_competition
from common.submit.leaderboard import main as leaderboard_main
from common.submit.leaderboard import parse_scores
from tests.conftest import REPO

HUBMAP = "competitions/hubmap/configs/unet_resnet18_cpu.yaml"
LUNG = "competitions/lung/configs/unet_resnet18_cpu.yaml"
SIIM = "competitions/siim/configs/unet_resnet18_cpu.yaml"


def _stage(name: str, stage: str, *argv: str) -> str:
    """The one line a stage exits with (it must exit with one)."""
    with pytest.raises(SystemExit) as exit_info:
        load_competition(name).run(stage, list(argv))
    return str(exit_info.value.code)


@pytest.mark.parametrize(("name", "config"), [("hubmap", HUBMAP), ("lung", LUNG), ("siim", SIIM)])
def test_every_prepare_takes_skip_bad_and_its_overrides(name, config, monkeypatch, tmp_path):
    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    message = _stage(name, "prepare", "--config", config, "--skip-bad", "data.windw=512")
    assert "unknown key 'data.windw'" in message  # parsed: neither refused nor ignored
    monkeypatch.setenv("SKIP_BAD", "1")
    message = _stage(name, "prepare", "--config", config, "data.windw=512")
    assert "unknown key 'data.windw'" in message
    assert not (tmp_path / "data").exists()  # nothing made for a bad command line


@pytest.mark.parametrize(
    ("name", "config", "override", "expected"),
    [
        ("hubmap", HUBMAP, "data.window=0", "data.window = 0: must be a positive number"),
        ("hubmap", HUBMAP, "data.window=-5", "data.window = -5: must be a positive number"),
        ("hubmap", HUBMAP, "data.size=0", "data.size = 0: must be a positive number"),
        ("lung", LUNG, "data.size=0", "data.size = 0: must be a positive number"),
        ("lung", LUNG, "data.score_size=-1", "data.score_size = -1: must be a positive number"),
    ],
)
def test_zero_or_negative_sizes_are_one_line(name, config, override, expected, monkeypatch,
                                             tmp_path):  # fmt: skip
    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    assert expected in _stage(name, "prepare", "--config", config, override)
    assert not (tmp_path / "data" / name / "prepared").exists()
    assert not (tmp_path / "data" / name / "synthetic").exists()  # checked before any work


def test_an_unwritable_output_is_one_line_naming_the_path(monkeypatch, tmp_path):
    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    message = _stage("lung", "prepare", "--config", LUNG, "data.size=64", "data.score_size=64",
                     f"data.prepared={blocker / 'prepared'}")  # fmt: skip
    assert str(blocker) in message and "\n" not in message


def test_leaderboard_of_an_unknown_competition_makes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("KSEG_WORKSPACE", str(tmp_path))
    with pytest.raises(SystemExit, match=r"competition 'nonexistent' is unknown"):
        leaderboard_main(["--competition", "nonexistent"])
    assert not (tmp_path / "models").exists()


def test_public_scores_are_checked(tmp_path):
    (tmp_path / "default.csv").write_text("ImageId,EncodedPixels\n")
    assert parse_scores(["default=0.8612"], tmp_path) == {"default": 0.8612}
    for bad, reason in [("default=nan", "with a number"), ("default=-3", "between 0 and 1"),
                        ("default=1.7", "between 0 and 1"), ("nosuch=0.5", "no submission"),
                        ("default", "with a number"), ("=0.5", "with a number")]:  # fmt: skip
        with pytest.raises(ValueError, match=reason):
            parse_scores([bad], tmp_path)
    with pytest.raises(SystemExit, match="need --competition"):
        leaderboard_main(["--record", "default=0.5"])


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_stop_when_a_prepare_is_killed(tmp_path):
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from common.io.cache import Entry, Table, refresh
from tests.faults.slow_work import slow
entries = [Entry(f"i{{k:03d}}", "t.csv", "k", (f"i{{k:03d}}.txt",), None) for k in range(200)]
refresh(Path({str(tmp_path / "out")!r}), [Table("t.csv", ("id",))], entries, slow, n_jobs=2, chunk=1)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=False)
    try:
        workers: set[int] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "out").glob("*.txt")):
            time.sleep(0.2)
        workers = {p for p in _children(parent.pid) if _alive(p)}
        assert workers, "the prepare started no worker process"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers), "workers outlived the killed prepare"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_second_run_of_a_fold_or_an_ensemble_stops_with_one_line(tmp_path):
    from common.config import load_config
    from common.io.locks import exclusive
    from common.submit.ensemble import run_ensemble
    from common.train.runner import run_fold

    config = load_config(REPO / "competitions" / "siim" / "configs" / "base.yaml",
                         [f"output={tmp_path}", "name=x"])  # fmt: skip
    with exclusive(tmp_path / "x" / ".fold0.lock", "the first run"):
        with pytest.raises(ValueError, match=r"another training of x fold 0 is running"):
            run_fold(config, 0, lambda *_: None, lambda *_: {}, log=lambda _: None)
    ensemble = load_config(REPO / "competitions" / "siim" / "configs" / "ensembles" / "default.yaml",
                           [f"output={tmp_path}", "name=blend"])  # fmt: skip
    with exclusive(tmp_path / ".blend.lock", "the first run"):
        with pytest.raises(ValueError, match=r"another ensemble blend is running .*\.blend\.lock"):
            run_ensemble(ensemble, None, log=lambda _: None)


def test_two_prepares_at_once_both_finish_consistently(tmp_path):
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from common.io.cache import Entry, Table, refresh
from tests.faults.slow_work import slow
entries = [Entry(f"i{{k:02d}}", "t.csv", "k", (f"i{{k:02d}}.txt",), None) for k in range(12)]
result = refresh(Path({str(tmp_path / "out")!r}), [Table("t.csv", ("id",))], entries, slow, n_jobs=2, chunk=1)
print(result.done, result.cached)
"""
    runs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    outputs = sorted(run.communicate(timeout=120)[0].split() for run in runs)
    assert all(run.returncode == 0 for run in runs)
    assert outputs == [["0", "12"], ["12", "0"]]  # one did the work, the other waited for it
    assert sorted(p.name for p in (tmp_path / "out").glob("*.txt")) == [
        f"i{k:02d}.txt" for k in range(12)
    ]


def test_temp_files_of_killed_writers_are_cleared(tmp_path):
    from common.io.atomic import remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "images").mkdir()
    stale = tmp_path / "images" / f".a.png.{dead.pid}-3.tmp"
    alive = tmp_path / "images" / f".b.png.{os.getpid()}-1.tmp"
    other = tmp_path / "images" / ".notes.tmp"
    for path in (stale, alive, other):
        path.write_bytes(b"half")
    assert remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and alive.exists() and other.exists()


def test_a_fold_killed_between_its_weights_and_its_metrics_has_not_finished(tmp_path):
    """Found by the kill-and-re-run harness: an ensemble killed after a member fold's final.pt
    but before its metrics.json left that fold half run, and the re-run took it as trained."""
    from common.submit.ensemble import Member, missing_folds

    fold = tmp_path / "run" / "fold0"
    fold.mkdir(parents=True)
    (fold / "final.pt").write_bytes(b"weights")
    members = [Member("run", (0,), 1.0)]
    assert missing_folds(tmp_path, members) == []  # usable weights (check_trained, bundles)
    assert missing_folds(tmp_path, members, finished=True) == [("run", 0)]  # train_missing
    (fold / "metrics.json").write_text("{}")
    assert missing_folds(tmp_path, members, finished=True) == []
