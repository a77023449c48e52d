"""One command line for every stage of every competition (``common.competition``).

    python -m common.cli STAGE --competition NAME [the stage's arguments]
    python -m common.cli STAGE --dataset FOLDER   [the stage's arguments]   (no code: docs/DATASETS.md)
    python -m common.cli list                     (the competitions and their stages)

STAGE is one of prepare, train, evaluate, ensemble, offline, bundle, validate, submit, pseudo,
leaderboard, tile-filter (a competition lists those it has). The make targets are thin aliases
of it. Every prepare (and every train that prepares first) takes ``--skip-bad`` (or
``SKIP_BAD=1`` in the environment) and ``key=value`` overrides.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.competition import STAGES, load_competition
from common.io.atomic import os_error_line


def _list() -> str:
    from common.io.paths import REPO

    lines = []
    for init in sorted((REPO / "competitions").glob("*/__init__.py")):
        c = load_competition(init.parent.name)
        stages = ", ".join(s for s in STAGES if s in c.stages)
        lines.append(f"{c.name:8s} {c.unit:6s} {c.metric:8s} {stages}")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv[0] == "list":
        print(_list())
        return
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.exit(f"cli: stage {stage!r} is unknown; valid: {', '.join(STAGES)}, list")
    name = None
    for flag in ("--competition", "--dataset"):
        if flag in rest:
            i = rest.index(flag)
            if i + 1 >= len(rest):
                sys.exit(f"cli: {flag} needs a value")
            value = rest[i + 1]
            if flag == "--competition":
                name, rest = value, rest[:i] + rest[i + 2 :]
            else:  # the folder competition takes --dataset itself
                name, rest = (
                    "folder",
                    [*rest[:i], "--dataset", str(Path(value).resolve()), *rest[i + 2 :]],
                )
    if name is None:
        sys.exit("cli: say --competition NAME or --dataset FOLDER")
    try:
        competition = load_competition(name)
    except ValueError as error:
        sys.exit(f"cli: {error}")
    try:
        competition.run(stage, rest)
    except ValueError as error:
        sys.exit(f"{name} {stage}: {error}")
    except OSError as error:  # a full disk, a read-only folder: one line naming the path
        sys.exit(f"{name} {stage}: {os_error_line(error)}")


if __name__ == "__main__":
    main()
