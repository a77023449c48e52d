"""Every experiment and submission of a competition in one table (the SIIM 1st place's dashboard).

    python -m common.submit.leaderboard [--competition siim] [--record NAME=SCORE ...] [--kaggle SLUG]

Reads what the stages already write, nothing else:

    models/<competition>/<run>/fold<k>/   config.yaml (resolved), metrics.json (``score``,
                                          ``metric``, ``thresholds``, ``epochs_run``,
                                          ``wall_seconds``), final.pt, log.csv, error.json
    models/<competition>/<ensemble>/      thresholds.yaml (``oof_dice``) without fold folders
    submissions/<competition>/<name>.csv  with <name>.json beside it (``cv`` or ``oof_dice``)
    submissions/<competition>/public_scores.csv   submission,public_score,source: what the user
                                          recorded (``--record``) or Kaggle returned (``--kaggle``)

and writes ``models/<competition>/leaderboard.md``, ``.csv`` (runs) with
``leaderboard_submissions.csv``, and ``leaderboard.png``, runs sorted by CV (mean over scored
folds; spread is the sample standard deviation). A run's ``changes`` are the keys of its
resolved config that differ from the competition's ``configs/base.yaml`` resolved today. A fold
is ``done`` (scored), ``trained`` (final.pt, not scored yet), ``crashed`` (error.json, written by
``common.train.runner.train_fold`` when training raises), ``unfinished`` (killed, or still running) or
``unreadable`` (a corrupt metrics.json, named); no run is dropped, and a corrupt file is named
in the row instead of stopping the table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from common.config import ConfigError, load_config
from common.io.atomic import atomic_path, write_text_atomic
from common.io.paths import REPO, models_dir, submissions_dir
from common.train.runner import ERROR, METRICS

PUBLIC = "public_scores.csv"
IGNORED = ("name", "output", "submissions")  # differ between runs by construction
_FOLD = re.compile(r"fold(\d+)")


@dataclass(frozen=True)
class Fold:
    fold: int
    status: str  # done | trained | crashed | unfinished | unreadable
    score: float | None = None
    metric: str = ""
    thresholds: dict | None = None
    epochs: int | None = None
    seconds: float | None = None
    error: str = ""


def _read(path: Path, parse=json.loads) -> tuple[dict, str]:
    """(the file's mapping, "") or ({}, the problem naming the file); a missing file is ({}, "")."""
    if not path.is_file():
        return {}, ""
    try:
        data = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as error:
        return {}, f"{path.name} unreadable: {str(error).splitlines()[0][:80]}"
    if not isinstance(data, dict):
        return {}, f"{path.name} unreadable: not a mapping"
    return data, ""


def _epochs_logged(fold_dir: Path) -> int:
    total = 0
    for log in sorted(fold_dir.glob("**/log.csv")):
        try:
            total += len(pd.read_csv(log))
        except (OSError, ValueError, pd.errors.EmptyDataError):
            pass
    return total


def read_fold(fold_dir: Path) -> Fold:
    """The state of one fold folder from its files."""
    fold = int(_FOLD.fullmatch(fold_dir.name).group(1))
    metrics, problem = _read(fold_dir / METRICS)
    if problem:
        return Fold(fold=fold, status="unreadable", error=problem)
    epochs = metrics.get("epochs_run")
    epochs = int(epochs) if epochs is not None else _epochs_logged(fold_dir)
    common = {"fold": fold, "epochs": epochs, "seconds": metrics.get("wall_seconds")}
    if metrics.get("score") is not None:
        return Fold(status="done", score=float(metrics["score"]), metric=metrics.get("metric", ""),
                    thresholds=metrics.get("thresholds"), **common)  # fmt: skip
    if (fold_dir / "final.pt").is_file():
        return Fold(status="trained", **common)
    error, problem = _read(fold_dir / ERROR)
    if error or problem:
        error = error or {"error": problem}
        return Fold(status="crashed", error=str(error.get("error", ""))[:120], **common)
    return Fold(status="unfinished", **common)


def _flat(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out |= _flat(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _short(value, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_changes(config: dict, base: dict | None) -> str:
    """``key=value`` for every key of the resolved ``config`` whose value differs from
    ``base`` (keys the base does not have are changes too)."""
    if base is None:
        return ""
    ours, theirs = _flat(config), _flat(base)
    changed = [
        f"{key}={_short(value)}"
        for key, value in ours.items()
        if key not in IGNORED and (key not in theirs or theirs[key] != value)
    ]
    return ", ".join(changed)


def base_config(competition: str) -> dict | None:
    """The competition's ``configs/base.yaml`` resolved, or None when it has none."""
    path = REPO / "competitions" / competition / "configs" / "base.yaml"
    try:
        return load_config(path).to_dict() if path.is_file() else None
    except (ConfigError, ValueError, OSError):
        return None


def _thresholds_text(thresholds) -> str:
    if not thresholds:
        return ""
    if isinstance(thresholds, dict):
        return ", ".join(f"{k} {_short(v, 24)}" for k, v in thresholds.items())
    return _short(thresholds)


def read_run(run_dir: Path, base: dict | None) -> dict | None:
    """One row for a run folder (folds) or an ensemble folder (thresholds.yaml only)."""
    fold_dirs = sorted(
        (d for d in run_dir.iterdir() if d.is_dir() and _FOLD.fullmatch(d.name)),
        key=lambda d: int(d.name[4:]),
    )
    if not fold_dirs:
        path = run_dir / "thresholds.yaml"
        if not path.is_file():
            return None
        found, problem = _read(path, yaml.safe_load)
        cv = found.get("oof_dice")
        return {"experiment": run_dir.name, "kind": "ensemble",
                "status": problem or ("done" if cv is not None else "unscored"), "changes": "",
                "metric": "OOF Dice", "folds": "", "fold_scores": "",
                "cv": float(cv) if cv is not None else math.nan, "spread": math.nan,
                "thresholds": _thresholds_text({k: v for k, v in found.items()
                                                if k not in ("oof_dice", "empty_dice")}),
                "epochs": "", "wall_minutes": math.nan}  # fmt: skip
    folds = [read_fold(d) for d in fold_dirs]
    config_path = next(
        (d / "config.yaml" for d in fold_dirs if (d / "config.yaml").is_file()), None
    )
    config, problem = _read(config_path, yaml.safe_load) if config_path else (None, "")
    scores = [f.score for f in folds if f.score is not None]
    statuses = {f.status for f in folds}
    status = "done" if statuses == {"done"} else ", ".join(
        f"fold {f.fold} {f.status}" + (f" ({f.error})" if f.error else "")
        for f in folds if f.status != "done"
    )  # fmt: skip
    seconds = [f.seconds for f in folds if f.seconds is not None]
    return {
        "experiment": run_dir.name,
        "kind": "run",
        "status": status,
        "changes": problem or (config_changes(config, base) if config else "(no config.yaml)"),
        "metric": next((f.metric for f in folds if f.metric), ""),
        "folds": ",".join(str(f.fold) for f in folds),
        "fold_scores": ", ".join(
            f"{f.fold}: {f.score:.4f}" if f.score is not None else f"{f.fold}: -" for f in folds
        ),
        "cv": float(np.mean(scores)) if scores else math.nan,
        "spread": float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
        "thresholds": "; ".join(
            f"{f.fold}: {_thresholds_text(f.thresholds)}" for f in folds if f.thresholds
        ),
        "epochs": ",".join(str(f.epochs) if f.epochs is not None else "-" for f in folds),
        "wall_minutes": round(sum(seconds) / 60, 1) if seconds else math.nan,
    }


def _positives(csv: Path) -> tuple[int, int]:
    """(rows, rows with a non-empty mask) of a submission: its last column is the encoding,
    empty as "", "-1" or missing."""
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if frame.shape[1] < 2:
        raise ValueError(f"{csv}: expected an id column and an encoding column")
    encoding = frame.iloc[:, -1].str.strip()
    return len(frame), int((~encoding.isin(["", "-1"])).sum())


def read_public(folder: Path) -> dict[str, tuple[float, str]]:
    path = folder / PUBLIC
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype={"submission": str})
    missing = {"submission", "public_score"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    sources = frame["source"] if "source" in frame else ["recorded"] * len(frame)
    return {
        s: (float(p), str(src))
        for s, p, src in zip(frame["submission"], frame["public_score"], sources, strict=True)
    }


def record_public(folder: Path, scores: dict[str, float], source: str = "recorded") -> Path:
    """Add or replace public scores in ``public_scores.csv`` (atomically)."""
    known = read_public(folder) | {name: (float(v), source) for name, v in scores.items()}
    frame = pd.DataFrame(
        [(name, score, src) for name, (score, src) in sorted(known.items())],
        columns=["submission", "public_score", "source"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / PUBLIC) as tmp:
        frame.to_csv(tmp, index=False)
    return folder / PUBLIC


def read_submissions(folder: Path) -> pd.DataFrame:
    public = read_public(folder)
    rows = []
    for csv in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        if csv.name == PUBLIC:
            continue
        info, problem = _read(csv.with_suffix(".json"))
        if problem:
            info = {"problem": problem}
        cv = info.get("cv", info.get("oof_dice"))
        try:
            n_rows, positives = _positives(csv)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            n_rows, positives = 0, 0
            info.setdefault("problem", str(error).splitlines()[0][:120])
        score, source = public.get(csv.stem, (math.nan, ""))
        rows.append({"submission": csv.stem, "cv": float(cv) if cv is not None else math.nan,
                     "cv_metric": info.get("cv_metric", "OOF Dice" if cv is not None else ""),
                     "rows": n_rows, "predicted_positive": positives, "public": score,
                     "public_source": source,
                     "note": info.get("problem", "" if info else "no provenance .json")})  # fmt: skip
    columns = ["submission", "cv", "cv_metric", "rows", "predicted_positive", "public",
               "public_source", "note"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("cv", ascending=False, na_position="last", kind="stable")


def read_runs(folder: Path, base: dict | None) -> pd.DataFrame:
    rows = (
        [read_run(d, base) for d in sorted(folder.iterdir()) if d.is_dir()]
        if folder.is_dir()
        else []
    )
    columns = ["experiment", "kind", "status", "cv", "spread", "metric", "fold_scores", "folds",
               "thresholds", "epochs", "wall_minutes", "changes"]  # fmt: skip
    frame = pd.DataFrame([r for r in rows if r], columns=columns)
    return frame.sort_values("cv", ascending=False, na_position="last", kind="stable")


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def fetch_kaggle(slug: str) -> dict[str, float]:
    """Public scores of the user's submissions to competition ``slug``, by CSV stem (the
    latest scored submission of each file name)."""
    from common.submit.kaggle import call_kaggle

    found = call_kaggle(lambda api: api.competition_submissions(slug), "kaggle submissions")
    scores = {}
    for item in reversed(list(found or [])):  # oldest first: the latest wins
        name = getattr(item, "file_name", None) or getattr(item, "fileName", None)
        score = getattr(item, "public_score", None) or getattr(item, "publicScore", None)
        if name and score not in (None, ""):
            scores[Path(str(name)).stem] = float(score)
    return scores


def write_leaderboard(competition: str, *, models: Path | None = None,
                      submissions: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Path]:  # fmt: skip
    """Collect and write ``leaderboard.md`` / ``.csv`` / ``.png`` (and the submissions CSV)
    under ``models/<competition>/``; returns both tables and the Markdown path."""
    from common.plots import table_figure

    models = models or models_dir(competition)
    submissions = submissions or submissions_dir(competition)
    runs = read_runs(models, base_config(competition))
    subs = read_submissions(submissions)
    models.mkdir(parents=True, exist_ok=True)
    with atomic_path(models / "leaderboard.csv") as tmp:
        runs.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(models / "leaderboard_submissions.csv") as tmp:
        subs.to_csv(tmp, index=False, float_format="%.6f")
    text = (
        f"# {competition}: experiments by CV\n\n"
        f"{len(runs)} run(s) under {models}; CV is the mean over scored folds of each fold's "
        "metric (named in `metric`), spread its sample standard deviation.\n\n"
        f"{markdown_table(runs)}\n\n## Submissions ({submissions})\n\n{markdown_table(subs)}\n"
    )
    write_text_atomic(models / "leaderboard.md", text)
    shown = runs[["experiment", "status", "cv", "spread", "fold_scores", "epochs", "wall_minutes",
                  "changes"]]  # fmt: skip
    table_figure(shown, models / "leaderboard.png", f"{competition}: experiments by CV")
    return runs, subs, models / "leaderboard.md"


def check_competition(name: str) -> None:
    """A competition with a package, or one with runs or submissions (a dataset folder's);
    anything else is refused before a folder is made for it."""
    packages = {p.parent.name for p in (REPO / "competitions").glob("*/__init__.py")}
    known = sorted(packages | set(_competitions()))
    if name not in known:
        raise ValueError(f"competition {name!r} is unknown: it has no package and no runs; "
                         f"known: {', '.join(known)}")  # fmt: skip


def parse_scores(items, folder: Path) -> dict[str, float]:
    """``NAME=SCORE`` items as {submission: score}: the submission must exist in ``folder``
    and the score be a number in [0, 1] (Dice, Jaccard and the like); one error names them all."""
    scores, problems = {}, []
    for item in items:
        name, sep, value = (part.strip() for part in item.partition("="))
        try:
            score = float(value) if sep else math.nan
        except ValueError:
            score = math.nan
        if not sep or not name or not math.isfinite(score):
            problems.append(f"{item!r}: expected NAME=SCORE with a number")
        elif not 0.0 <= score <= 1.0:
            problems.append(f"{item!r}: a public score is between 0 and 1")
        elif not (folder / f"{name}.csv").is_file():
            problems.append(f"{item!r}: no submission {folder / name}.csv")
        else:
            scores[name] = score
    if problems:
        raise ValueError("nothing recorded: " + "; ".join(problems))
    return scores


def _competitions() -> list[str]:
    roots = [models_dir("x").parent, submissions_dir("x").parent]
    names = {d.name for root in roots if root.is_dir() for d in root.iterdir() if d.is_dir()}
    return sorted(names)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--competition", help="one competition (default: every one with runs)")
    parser.add_argument("--record", nargs="*", default=[], metavar="NAME=SCORE",
                        help="record public leaderboard scores of submissions")  # fmt: skip
    parser.add_argument("--kaggle", metavar="SLUG", help="fetch public scores with the kaggle API")
    args = parser.parse_args(argv)
    try:
        if (args.record or args.kaggle) and not args.competition:
            raise ValueError("--record and --kaggle need --competition (COMPETITION=)")
        if args.competition:
            check_competition(args.competition)
        if args.record:
            record_public(submissions_dir(args.competition), parse_scores(args.record,
                          submissions_dir(args.competition)))  # fmt: skip
        if args.kaggle:
            record_public(submissions_dir(args.competition), fetch_kaggle(args.kaggle), "kaggle")
        names = [args.competition] if args.competition else _competitions()
        if not names:
            print("no runs or submissions yet under models/ or submissions/")
        for name in names:
            path = write_leaderboard(name)[2]
            print(path.read_text())
            print(f"-> {path} (.csv, .png)")
    except (ValueError, RuntimeError) as error:
        sys.exit(f"leaderboard: {error}")


if __name__ == "__main__":
    main()
