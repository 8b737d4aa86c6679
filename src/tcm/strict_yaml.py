"""YAML as DVC reads it: a key given twice in one mapping is an error, not "the last one wins".

PyYAML's ``safe_load`` keeps the last of two equal keys, so ``tcm train`` would silently train what
the second ``epochs:`` says while ``dvc repro`` refuses the same file. Every command reads params and
profiles through :func:`load_yaml`, so the command line and the pipeline agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tcm.errors import TcmError


class YamlError(TcmError, ValueError):
    """A file that is not readable, not UTF-8 or not valid YAML, or that repeats a key; names the file and line."""


class _StrictLoader(yaml.SafeLoader):
    pass


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are overridable by design
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in first:
            raise YamlError(f"{loader.name}, line {line}: duplicate key {key!r} (first given at line {first[key]}); "
                            "YAML would keep only the last one: remove or rename one of them")
        first[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (named ``source`` in errors) refusing duplicate keys.

    >>> parse_yaml("a: 1\\nb: {c: 2}", "x.yaml")
    {'a': 1, 'b': {'c': 2}}
    >>> parse_yaml("a: 1\\na: 2", "x.yaml")
    Traceback (most recent call last):
    ...
    tcm.strict_yaml.YamlError: x.yaml, line 2: duplicate key 'a' (first given at line 1); ...
    """
    loader = _StrictLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise YamlError(f"{source}{where}: not valid YAML: {problem}".replace("\n", " ")) from None
    finally:
        loader.dispose()


def load_yaml(path: Path | str) -> Any:
    """Read and parse a YAML file; errors name the file (and line) and say what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise YamlError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise YamlError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save it as UTF-8") from None
    return parse_yaml(text, str(path))
