"""What a competition is, for the one command line (``common.cli``): a small descriptor over the
common stages. Each ``competitions/<name>/__init__.py`` exports one as ``COMPETITION``; a
dataset folder in the documented layout is the ``folder`` competition, with no code.

Stages are named ``module:function`` entries taking the stage's command-line arguments, imported
only when run (a descriptor costs nothing to read, and ``common`` never imports a competition).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

STAGES = ("prepare", "train", "evaluate", "ensemble", "offline", "bundle", "validate", "submit",
          "pseudo", "leaderboard", "tile-filter")  # fmt: skip
UNITS = ("image", "slide")


@dataclass(frozen=True)
class Competition:
    """A competition: its name (``models/<name>/``, ``data/<name>/``), its unit (``image``, or a
    huge ``slide`` predicted in tiles), its source (``download`` with an embedded ``synthetic``
    set, or a dataset ``folder``), its mask channels (empty: read from the data), metric,
    configs folder with the default experiment and ensemble, TTA views it allows, its stages
    (``STAGES`` name -> ``module:function(argv)``; a function with a ``competition`` keyword is
    given this descriptor, so one common stage serves every competition), its data spec
    (``module:attribute``, e.g. a ``common.data.slide_tiles.SlideSet``), an image competition's
    ensemble spec (a ``common.submit.image_ensemble.ImageEnsemble``) and its Kaggle bundle
    (``common.submit.kaggle.BundleSpec``'s fields but the package)."""

    name: str
    unit: str
    source: str
    metric: str
    configs: Path
    default_experiment: str
    default_ensemble: str
    stages: Mapping[str, str]
    channels: tuple[str, ...] = ()
    tta: tuple[str, ...] = ("none", "hflip")
    notes: str = ""
    data: str = ""
    ensemble: str = ""
    bundle: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"{self.name}: unit {self.unit!r}; valid: {', '.join(UNITS)}")
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise ValueError(f"{self.name}: unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")

    def run(self, stage: str, argv: Sequence[str]):
        """Run ``stage`` with its command-line arguments."""
        if stage not in self.stages:
            raise ValueError(f"{self.name} has no stage {stage!r}; its stages: "
                             f"{', '.join(s for s in STAGES if s in self.stages)}")  # fmt: skip
        argv = list(argv)
        entry = self.entry(stage)
        if stage == "offline":  # predict_submission(bundle, data, working), as a notebook runs it
            import argparse

            parser = argparse.ArgumentParser(description=f"{self.name}: offline submission")
            for name in ("--bundle", "--data", "--working"):
                parser.add_argument(name, required=True)
            parser.add_argument("--dataset", help="(the folder competition's data by default)")
            args = parser.parse_args(argv)
            return entry(args.bundle, args.data, args.working)
        if stage == "validate":  # validate(csv, sample=None) -> (counts, sample, synthetic)
            import argparse

            parser = argparse.ArgumentParser(description=f"{self.name}: validate a submission")
            parser.add_argument("--csv", required=True)
            parser.add_argument("--sample", help="sample submission (found if omitted)")
            args = parser.parse_args(argv)
            counts, sample, _ = entry(args.csv, sample=args.sample)
            print(f"{args.csv}: valid against {sample} ({counts['rows']} rows)")
            return counts
        if stage == "leaderboard" and "--competition" not in argv:
            argv = ["--competition", self.name, *argv]
        return entry(argv)

    def entry(self, stage: str):
        """The stage's function, imported now, with this descriptor bound when it takes one."""
        module, function = self.stages[stage].split(":")
        entry = getattr(importlib.import_module(module), function)
        if "competition" in inspect.signature(entry).parameters:
            return partial(entry, competition=self)
        return entry

    def data_spec(self, part: str = "data"):
        """The object ``data`` (or ``ensemble``) names (``module:attribute``), imported now."""
        named = getattr(self, part)
        if not named:
            raise ValueError(f"{self.name}: the descriptor names no {part} spec")
        module, attribute = named.split(":")
        return getattr(importlib.import_module(module), attribute)


def load_competition(name: str) -> Competition:
    """The descriptor of ``competitions/<name>/`` (an error lists the competitions there)."""
    from common.io.paths import REPO

    found = sorted(p.parent.name for p in (REPO / "competitions").glob("*/__init__.py"))
    if name not in found:
        raise ValueError(f"competition {name!r} is unknown; valid: {', '.join(found)}")
    descriptor = getattr(importlib.import_module(f"competitions.{name}"), "COMPETITION", None)
    if not isinstance(descriptor, Competition):
        raise ValueError(f"competitions/{name}/__init__.py exports no COMPETITION descriptor")
    return descriptor
