"""Kaggle: the frozen bundle of an ensemble for a notebook that runs with the internet off, and
the authenticated ``kaggle`` API (submit, push) with one-line failures, for any competition.

``build`` writes ``<out>/<name>/``:

    dataset/src/              common/ and competitions/ (code, configs, transforms): the notebook
                              puts this folder first on sys.path, nothing to install
    dataset/models/<experiment>/fold<k>/final.pt   the ensemble's weights, nothing else of models/
    dataset/stages/<run>/fold<k>/final.pt     the crop stages of members trained on crops
                              (``data.crop_stage``, e.g. the SIIM lung crop), by run name
    dataset/ensemble.yaml     the resolved ensemble;  dataset/thresholds.yaml  its searched thresholds
    dataset/wheels/           wheels of the pinned packages Kaggle's image may lack, installed by the
                              notebook with pip --no-index only when an import fails
    dataset/dataset-metadata.json
    kernel/inference.ipynb    the notebook: it runs the competition descriptor's ``offline`` stage
                              (``predict_submission(bundle, input, working)``) and writes
                              submission.csv;
    kernel/kernel-metadata.json   (internet off, GPU on, the dataset and the competition's data as
                              sources)

A competition states what differs in its descriptor's ``bundle`` (a ``BundleSpec`` but the
package): the Kaggle competition or dataset holding its test data, and the wheels its reader
needs. ``push`` creates (or versions)
the dataset and pushes the kernel; without credentials or a network it fails with one line. No
credential is ever written into the bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.config import Config
from common.data.crops import crop_spec
from common.infer.predict import FINAL_CONFIG, final_config, final_path
from common.io.atomic import atomic_dir, remove_stale_builds, write_text_atomic
from common.io.locks import exclusive
from common.io.paths import REPO
from common.submit.ensemble import parse_members

T = TypeVar("T")
CODE = ("common", "competitions")
STAGES = "stages"  # the bundle's folder of crop-stage runs
CODE_SUFFIXES = {".py", ".json", ".yaml"}
# packages every notebook needs that Kaggle's image may lack or hold in another major version:
# distribution name -> import name
WHEELS = {
    "segmentation-models-pytorch": "segmentation_models_pytorch",
    "timm": "timm",
    "iterative-stratification": "iterstrat",
}


@dataclass(frozen=True)
class BundleSpec:
    """What one competition's bundle differs in."""

    package: str  # the competition: its descriptor's offline stage runs in the notebook
    title: str  # e.g. "SIIM"
    input_slug: str  # the folder under /kaggle/input holding the test data
    competition: str | None = None  # the Kaggle competition (a kernel source), if it is one
    datasets: tuple[str, ...] = ()  # Kaggle datasets holding the test data otherwise
    wheels: dict[str, str] = field(default_factory=dict)  # extra distribution -> import name

    @property
    def all_wheels(self) -> dict[str, str]:
        return WHEELS | self.wheels


def _copy_final(source: Path, target: Path) -> None:
    """A fold's ``final.pt`` and, when the run wrote it, its ``final.yaml``."""
    shutil.copy2(source, target)
    if source.with_name(FINAL_CONFIG).is_file():
        shutil.copy2(source.with_name(FINAL_CONFIG), target.with_name(FINAL_CONFIG))


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:50] or "bundle"


def pins() -> dict[str, str]:
    """Package -> version from requirements.txt."""
    pinned = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.strip().lower()] = version.strip()
    return pinned


def copy_code(target: Path) -> None:
    for package in CODE:
        for path in sorted((REPO / package).rglob("*")):
            if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts:
                destination = target / path.relative_to(REPO)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)


def download_wheels(target: Path, names) -> None:
    pinned = pins()
    target.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={pinned[name]}" for name in names]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", "3.11", "--dest", str(target), *specs]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise ValueError(f"could not download the wheels ({last}); use --no-wheels to skip")


def notebook(spec: BundleSpec, dataset_slug: str) -> dict:
    """The inference notebook: paths (Kaggle's, overridable), offline installs, the run."""
    cells = [
        f"# {spec.title} offline inference from a frozen bundle (generated by make kaggle-bundle)",
        f"""import os, sys, importlib.util, subprocess, glob
INPUT = os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input")
WORKING = os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working")
BUNDLE = os.environ.get("BUNDLE_DIR", os.path.join(INPUT, "{dataset_slug}"))
COMPETITION = os.environ.get("COMPETITION_DIR", os.path.join(INPUT, "{spec.input_slug}"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")""",
        f"""# install, without any network, the shipped wheels whose package cannot be imported
IMPORT_NAMES = {json.dumps(spec.all_wheels)}
missing = [p for p, module in IMPORT_NAMES.items() if importlib.util.find_spec(module) is None]
wheels = [w for p in missing for w in glob.glob(os.path.join(BUNDLE, "wheels", p.replace("-", "_") + "-*.whl"))]
if wheels:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *wheels], check=True)
print("installed offline:", [os.path.basename(w) for w in wheels] or "nothing needed")""",
        f"""sys.path.insert(0, os.path.join(BUNDLE, "src"))
from common.competition import load_competition
predict_submission = load_competition("{spec.package}").entry("offline")
path = predict_submission(BUNDLE, COMPETITION, WORKING)
print(open(path).read()[:500])""",
    ]
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": cells[0]},
            *(
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "metadata": {},
                    "outputs": [],
                    "source": source,
                }
                for source in cells[1:]
            ),
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def build(
    config: Config, out: Path, owner: str, *, spec: BundleSpec, wheels: bool = True, log=print
) -> Path:
    """Write the dataset and kernel folders into ``<out>/<ensemble name>/``, whole or not at all
    (built beside it and renamed; a killed build's folder is cleared by the next, under a lock);
    returns the bundle root."""
    members = parse_members(config.members, "members")
    members += parse_members(config.classifiers, "classifiers")
    thresholds = Path(config.output) / config.name / "thresholds.yaml"
    if not thresholds.is_file():
        raise ValueError(f"{thresholds} not found: run `make ensemble ENSEMBLE=...` first")
    root = Path(out) / config.name
    with exclusive(root.parent / f".{root.name}.lock", f"bundle {root.name}"):
        remove_stale_builds(root)  # what a killed build left
        with atomic_dir(root) as building:
            size = _build(config, building, owner, spec, members, thresholds, wheels)
    log(f"bundle {root}: dataset {size / 2**20:.1f} MiB ({len(members)} member(s)), kernel ready")
    return root


def _build(config, root: Path, owner: str, spec: BundleSpec, members, thresholds: Path,
           wheels: bool) -> int:  # fmt: skip
    dataset, kernel = root / "dataset", root / "kernel"
    copy_code(dataset / "src")
    stages = {}  # the crop stages of members trained on crops: run folder -> folds
    for member in members:
        for fold in member.folds:
            source = final_path(config.output, member.experiment, fold)
            if not source.is_file():
                raise ValueError(f"{source} not found: the ensemble's member is not trained")
            target = final_path(dataset / "models", member.experiment, fold)
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_final(source, target)
            stage = crop_spec(final_config(config.output, member.experiment, fold).data)
            if stage:
                stages.setdefault(Path(stage.run), set()).update(stage.stage_folds(fold))
    for run, folds in stages.items():
        for fold in sorted(folds):
            source = final_path(run.parent, run.name, fold)
            if not source.is_file():
                raise ValueError(f"{source} not found: the crop stage is not trained")
            target = final_path(dataset / STAGES, run.name, fold)
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_final(source, target)
    shutil.copy2(thresholds, dataset / "thresholds.yaml")
    frozen = config.to_dict() | {"train_missing": False}
    write_text_atomic(dataset / "ensemble.yaml", yaml.safe_dump(frozen, sort_keys=False))
    if wheels:
        download_wheels(dataset / "wheels", spec.all_wheels)
    name = slug(f"{spec.package}-{config.name}")
    metadata = {"title": f"{spec.title} {config.name} bundle", "id": f"{owner}/{name}"}
    metadata["licenses"] = [{"name": "CC0-1.0"}]
    write_text_atomic(dataset / "dataset-metadata.json", json.dumps(metadata, indent=2) + "\n")
    kernel.mkdir(parents=True)
    write_text_atomic(kernel / "inference.ipynb", json.dumps(notebook(spec, name), indent=1) + "\n")
    kernel_metadata = {
        "id": f"{owner}/{name}-inference",
        "title": f"{spec.title} {config.name} inference",
        "code_file": "inference.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_internet": False,
        "dataset_sources": [f"{owner}/{name}", *spec.datasets],
        "competition_sources": [spec.competition] if spec.competition else [],
        "kernel_sources": [],
    }
    write_text_atomic(kernel / "kernel-metadata.json", json.dumps(kernel_metadata, indent=2) + "\n")
    return sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file())


def has_credentials(env=os.environ) -> bool:
    """Whether the kaggle package will find credentials (its documented places), checked
    without importing it: on import it prints a page of help and exits when there are none."""
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return True
    folders = [Path(env["KAGGLE_CONFIG_DIR"])] if env.get("KAGGLE_CONFIG_DIR") else []
    folders.append(Path(env.get("HOME", "~")).expanduser() / ".kaggle")
    names = ("kaggle.json", "access_token", "credentials.json")
    return any((folder / name).is_file() for folder in folders for name in names)


def call_kaggle(action: Callable[[Any], T], what: str) -> T:
    """``action(api)`` with an authenticated kaggle API; ``RuntimeError`` with one line on any
    failure: no credentials, credentials refused, no network, an HTTP or API error. The
    package's own printing is captured, so nothing it says (nor any credential) is shown."""
    if not has_credentials():
        raise RuntimeError(
            "no Kaggle credentials: set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY), "
            "or put kaggle.json / access_token in ~/.kaggle"
        )
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
            return action(api)
    except SystemExit:
        raise RuntimeError(
            "the kaggle package refused the credentials (authentication failed)"
        ) from None
    except Exception as error:  # network, HTTP and API errors all end the same way
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise RuntimeError(f"{what} failed ({type(error).__name__}): {first}") from None


def push(root: Path, log=print) -> None:
    """Create or version the dataset, then push the kernel; ``RuntimeError`` with one line."""

    def upload(api) -> None:
        dataset = str(root / "dataset")
        try:
            api.dataset_create_version(dataset, "bundle update", dir_mode="zip")
        except Exception:  # a first push: the dataset does not exist yet
            api.dataset_create_new(dataset, dir_mode="zip")
        api.kernels_push(str(root / "kernel"))

    call_kaggle(upload, "push")
    log(f"pushed {root.name}: dataset and kernel")


def submit_main(argv=None, *, competition) -> None:
    """``submit``: validate a CSV (always first, by the competition's ``validate`` stage:
    ``validate(csv, sample=None)`` -> (counts, the sample it matched, whether that sample is the
    synthetic set's)), then send it with the ``kaggle`` package. A CSV made for the synthetic
    test set is refused: Kaggle would score it against other images. Without credentials or a
    network it fails with one line; nothing is changed and no credential is printed."""
    parser = argparse.ArgumentParser(description=f"{competition.name}: validate, then submit")
    parser.add_argument("--csv", required=True, type=Path)
    parser.add_argument("--sample", type=Path, help="sample submission (found if omitted)")
    parser.add_argument("--message", default="", help="submission description")
    parser.add_argument("--kaggle", default=competition.bundle.get("competition"),
                        help="the Kaggle competition's slug")  # fmt: skip
    parser.add_argument("--check-only", action="store_true", help="validate, do not submit")
    args = parser.parse_args(argv)
    try:
        counts, sample, synthetic = competition.entry("validate")(args.csv, sample=args.sample)
        print(f"{args.csv}: valid against {sample} ({counts['rows']} rows, "
              f"{counts['non_empty']} non-empty)")  # fmt: skip
        if args.check_only:
            return
        if synthetic:
            raise RuntimeError("this CSV is for the synthetic test set (no competition data in "
                               "its raw folder); not submitted")  # fmt: skip
        if not args.kaggle:
            raise ValueError(f"{competition.name} is not a Kaggle competition: pass --kaggle SLUG")
        result = call_kaggle(lambda api: api.competition_submit(
            str(args.csv), args.message or args.csv.stem, args.kaggle), "submission")  # fmt: skip
        print(result)
    except (ValueError, RuntimeError) as error:
        sys.exit(f"{competition.name} submit: {error}")


def competition_main(argv=None, *, competition) -> None:
    """The ``bundle`` stage of a competition whose descriptor states its ``bundle`` fields."""
    main(BundleSpec(package=competition.name, **competition.bundle), argv)


def main(spec: BundleSpec, argv=None) -> None:
    """``build`` / ``push`` from the command line, for the competition of ``spec``."""
    from common.config import load_run_config
    from common.io.paths import dist_dir

    parser = argparse.ArgumentParser(description=f"{spec.title}: freeze an ensemble for Kaggle")
    parser.add_argument("action", choices=("build", "push"))
    parser.add_argument("--ensemble", required=True, help="ensemble YAML")
    parser.add_argument("--out", default=dist_dir() / "kaggle", type=Path)
    parser.add_argument("--owner", default="your-kaggle-username", help="Kaggle user or team")
    parser.add_argument("--no-wheels", action="store_true", help="do not ship dependency wheels")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the ensemble")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.ensemble, args.overrides)
        if args.action == "build":
            build(config, args.out, args.owner, spec=spec, wheels=not args.no_wheels)
        else:
            root = args.out / config.name
            if not (root / "kernel" / "kernel-metadata.json").is_file():
                raise ValueError(f"{root} has no bundle: run `make kaggle-bundle` first")
            push(root)
    except (ValueError, RuntimeError) as error:
        sys.exit(f"{spec.package} kaggle-bundle: {error}")
