"""Experiment configs: YAML files with ``base:`` inheritance, ``key.sub=value`` overrides, checks.

Precedence is fixed: the schema's defaults, then each YAML file from the root base down to the
experiment, then command-line overrides. An experiment file holds only what it changes:

    base: base.yaml          # path relative to this file; may itself have a base
    model:
      encoder: resnet34
    train:
      epochs: 20

The schema is a nested dict of defaults: every key an experiment may set, with a default whose
type is the key's type. It is the root file of the chain, or, when the chain starts from a file of
``common/configs/`` (``base: "@common/experiment.yaml"``), that generic schema extended by the first
file below it (a competition's ``base.yaml``), which may add keys to the sections named in
``EXTENSIBLE`` and new top-level sections, but no key to a generic section. Rules: a key absent from the schema is an
error that lists the valid keys at that level; a value of another type is an error naming the key
(an int is accepted for a float, and a default of ``null`` accepts anything); a default of ``{}``
is a free-form mapping whose contents are not checked (e.g. a model's extra arguments).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from common.io.atomic import write_text_atomic
from common.io.paths import resolve

BASE_KEY = "base"
COMMON_PREFIX = "@common/"  # a base naming a file of common/configs/
COMMON_CONFIGS = Path(__file__).resolve().parent / "configs"
EXTENSIBLE = ("data", "predict")  # generic sections a competition's base may add keys to
# keys holding a file or folder: a relative value is made absolute under the workspace
# (common.io.paths), so a run finds the same files from any current folder
PATH_KEYS = (
    "output", "submissions", "test_truth", "prepared",
    "data.raw", "data.synthetic", "data.prepared", "data.folds", "model.weights",
    "data.pseudo.folder", "pseudo.images", "data.crop_stage.run",
)  # fmt: skip
_MAX_DEPTH = 16  # base chains deeper than this are a cycle or a mistake


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names which."""


class Config(dict):
    """A nested dict with attribute access (``config.train.epochs``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}; keys: {sorted(self)}") from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def to_config(value):
    """Nested dicts as ``Config`` (attribute access); other values unchanged."""
    if isinstance(value, dict):
        return Config({k: to_config(v) for k, v in value.items()})
    return value


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(data).__name__}")
    return data


def common_schema(name: str = "experiment.yaml") -> dict:
    """A generic schema of ``common/configs/`` (e.g. the experiment's) as a plain dict."""
    return read_yaml(COMMON_CONFIGS / name)


def _chain(path: Path) -> list[tuple[Path, dict]]:
    """The files from the root base down to ``path``, each with its own keys (base removed)."""
    chain: list[tuple[Path, dict]] = []
    while path is not None:
        if len(chain) >= _MAX_DEPTH or any(path.resolve() == p.resolve() for p, _ in chain):
            raise ConfigError(f"{path}: 'base' chain loops or is deeper than {_MAX_DEPTH}")
        data = read_yaml(path)
        base = data.pop(BASE_KEY, None)
        chain.append((path, data))
        if base is not None and not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file path, got {base!r}")
        path = _base_path(path, base) if base else None
    return chain[::-1]


def _base_path(path: Path, base: str) -> Path:
    if base.startswith(COMMON_PREFIX):
        return COMMON_CONFIGS / base[len(COMMON_PREFIX) :]
    return path.parent / base


def _is_common(path: Path) -> bool:
    return path.resolve().is_relative_to(COMMON_CONFIGS)


def extend_schema(schema: dict, update: dict, where: str, prefix: str = "") -> dict:
    """``schema`` with ``update``'s values as the new defaults, checked like ``merge``; keys new
    to ``schema`` are added only at the top level or directly in an ``EXTENSIBLE`` section."""
    out = copy.deepcopy(schema)
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        default = out.get(key)
        if key not in out:
            if prefix and prefix.rstrip(".") not in EXTENSIBLE:
                valid = ", ".join(sorted(map(str, out)))
                raise ConfigError(
                    f"{where}: unknown key {dotted!r}; a competition adds keys to "
                    f"{', '.join(EXTENSIBLE)} or new sections only; valid keys here: {valid}"
                )
            out[key] = copy.deepcopy(value)
        elif isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted!r} must be a mapping, got {value!r}")
            out[key] = extend_schema(default, value, where, f"{dotted}.")
        else:
            out[key] = copy.deepcopy(_check_type(value, default, dotted, where))
    return out


def merge(into: dict, update: dict, schema: dict, where: str, prefix: str = "") -> None:
    """Deep-merge ``update`` into ``into`` in place, checking every key and type against
    ``schema``; errors name ``where`` (a file or "override") and the dotted key."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(sorted(map(str, schema))) or "(none)"
            raise ConfigError(f"{where}: unknown key {dotted!r}; valid keys here: {valid}")
        default = schema[key]
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted!r} must be a mapping, got {value!r}")
            merge(into.setdefault(key, {}), value, default, where, f"{dotted}.")
        else:
            into[key] = copy.deepcopy(_check_type(value, default, dotted, where))


def _check_type(value, default, dotted: str, where: str):
    if default is None or (value is None and isinstance(default, dict)):
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string; take the number a user meant
            return float(value)
        except ValueError:
            pass
    if expected is bool or isinstance(value, bool):
        ok = isinstance(value, bool) and expected is bool
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"{where}: {dotted!r} must be {expected.__name__} (like the default {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nested(keys: list[str], value) -> dict:
    for key in reversed(keys):
        value = {key: value}
    return value


def load_config(
    path: str | os.PathLike, overrides: list[str] = (), *, schema: dict | None = None
) -> Config:
    """Resolve ``path`` (with its bases) and ``overrides`` against ``schema`` (default: the root
    base file of the chain, or the generic schema of ``common/configs/`` as extended by the
    competition's base: see the module docs)."""
    chain = _chain(Path(path))
    defaults = schema
    if schema is None:
        schema = defaults = chain[0][1]
        if _is_common(chain[0][0]):  # the generic schema, extended by the competition's base
            generic = chain[0][1]
            for index, (file, data) in enumerate(chain):
                if not _is_common(file):
                    defaults = extend_schema(generic, data, str(file))
                    schema = _nullable(generic, defaults)
                    chain = chain[index + 1 :]
                    break
                if index:
                    merge(generic, data, generic, str(file))
            else:
                chain = []
    resolved: dict = {}
    merge(resolved, copy.deepcopy(defaults), schema, "defaults")
    for file, data in chain:
        merge(resolved, data, schema, str(file))
    for text in overrides:
        keys, value = parse_override(text)
        merge(resolved, _nested(keys, value), schema, f"override {text!r}")
    _resolve_paths(resolved)
    return to_config(resolved)


def _nullable(generic: dict, extended: dict) -> dict:
    """``extended`` as a schema in which a key whose generic default is null still accepts any
    value (a competition's default for it does not fix its type)."""
    out = {}
    for key, value in extended.items():
        if key in generic and generic[key] is None:
            out[key] = None
        elif isinstance(value, dict) and isinstance(generic.get(key), dict) and generic[key]:
            out[key] = _nullable(generic[key], value)
        else:
            out[key] = value
    return out


def _resolve_paths(config: dict) -> None:
    for dotted in PATH_KEYS:
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(key), str) and node[key]:
            node[key] = str(resolve(node[key]))


def load_run_config(path: str | os.PathLike, overrides: list[str] = ()) -> Config:
    """``load_config``, where an empty ``name`` (the run's folder) becomes the file's stem."""
    config = load_config(path, overrides)
    if "name" in config and not config["name"]:
        config["name"] = Path(path).stem
    return config


def save_config(config: dict, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    data = config.to_dict() if isinstance(config, Config) else config
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
