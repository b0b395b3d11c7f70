"""One way from text to a config: flags, flagfiles and presets (as absl parsed them), sweep grids, search spaces.
Settings are named by their flags (a field's name, or the flag its `setting` names), nested configs' included:
`build(TrainConfig, {"model": "cnn", "hidden_units": "256-128"})`. A value is text (a list joins its elements with ','
or '-', as grids and run folder names do), or what absl parsed (a list flag's strings)."""

import dataclasses
import os
import re
import types
import typing

from mnist_dnn.lib.config import IDX_DIR_ENV, ConfigError, DatasetIdxDir

BOOLEANS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}  # as absl reads them


def flag_fields(config_class):
    """(field, flag name) of every field that is a flag, nested configs included, in order."""
    for field in dataclasses.fields(config_class):
        if dataclasses.is_dataclass(field.default):
            yield from flag_fields(type(field.default))
        elif field.metadata.get("flag") is not None:
            yield field, field.metadata["flag"] or field.name


def idx_dir(given: str | None = None) -> str | DatasetIdxDir | None:
    """`given` (--idx_dir: the run's own source, whatever its dataset), or else the MNIST_DNN_IDX_DIR variable. The
    variable names MNIST, so it serves `mnist` only: a DatasetIdxDir, as tools such as evaluate learn the dataset from
    the checkpoint, not from a flag."""
    folder = os.environ.get(IDX_DIR_ENV)
    return given or (DatasetIdxDir(folder, "mnist") if folder else None)


def kind(annotation) -> type:
    """The type of a field's annotation, None aside: str, int, float, bool or tuple (a list flag)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return kind(args[0])
    return typing.get_origin(annotation) or annotation


def build(base, settings: dict, source: str | None = None):
    """`base`, a config class (its defaults) or a config, with the fields that `settings` names (flag name -> value). A
    value its field cannot hold is a ConfigError naming the field (a scalar's: in flag `source`, e.g. grid, if given).
    """
    changes = {}
    for field in dataclasses.fields(base):
        name = field.name if field.metadata.get("flag") == "" else field.metadata.get("flag")
        if dataclasses.is_dataclass(field.default):
            nested = getattr(base, field.name)  # (a class's is the default config)
            changes[field.name] = build(type(nested) if isinstance(base, type) else nested, settings, source)
        elif name in settings:
            changes[field.name] = _value(field, name, settings[name], source)
    return base(**changes) if isinstance(base, type) else dataclasses.replace(base, **changes)


def _value(field, name: str, value, source: str | None):
    field_kind = kind(field.type)
    if field_kind is tuple:
        return field.default if value is None else _items(field, name, value)
    if not isinstance(value, str) or field_kind is str:
        return value
    try:
        return BOOLEANS[value.lower()] if field_kind is bool else field_kind(value)
    except (KeyError, ValueError) as e:
        reason = "it is neither true nor false" if field_kind is bool else e
        raise ConfigError(source or name, f"value {value!r} is not valid for `{name}`: {reason}") from None


def _items(field, name: str, value) -> tuple:
    """A list's text (`256,128` or `256-128`) or absl's strings as the field's tuple."""
    if isinstance(value, str):
        value = [v.strip() for v in re.split("[,-]", value)] if value else []
    tuple_type = next(a for a in (field.type, *typing.get_args(field.type)) if typing.get_origin(a) is tuple)
    if typing.get_args(tuple_type)[0] is not int:
        return tuple(value)
    try:
        return tuple(int(v) for v in value)
    except ValueError:
        got = ",".join(map(str, value))
        raise ConfigError(name, f"must be comma-separated integers such as 256,128; got {got}") from None
