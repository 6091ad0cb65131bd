"""Reading a config file (YAML, JSON or TOML) into plain data, remembering where each key is.

Every error about a config file names the file, the line and the key (``sweep.yaml:12:
groups.relax.cpus: ...``). YAML and JSON are composed with PyYAML, whose nodes carry their line
(JSON is read with :mod:`json`, which decides what the data is; PyYAML only finds the lines).
TOML has no parser with positions in the standard library, so its lines are found by reading
the table headers and ``key =`` lines.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shoal.errors import DefinitionError, hint

Loc = tuple[str | int, ...]
KINDS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
MAX_DEPTH = 64  # lists and mappings inside each other; real files use fewer than ten
MAX_ALIAS_VALUES = 100_000  # values that YAML aliases may add (a "billion laughs" adds 10**9)


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass
class Source:
    """A config file's data, and the line of every key and list item in it."""

    path: Path
    data: Any
    kind: str
    lines: dict[Loc, int] = field(default_factory=dict)
    overrides: dict[Loc, str] = field(default_factory=dict)  # loc -> the --set text
    max_tasks: int | None = None  # --max-tasks: the limit on the run's size, if given
    imports: bool = True  # False for shoal plan: functions are found, not imported

    @property
    def base(self) -> Path:
        """Relative paths in the file are relative to its folder."""
        return self.path.parent

    def line(self, loc: Loc) -> int | None:
        loc = tuple(loc)
        while loc:
            for key in (loc, tuple(str(p) for p in loc)):  # YAML keys like 1: are numbers
                if key in self.lines:
                    return self.lines[key]
            loc = loc[:-1]
        return None

    def where(self, loc: Loc) -> str:
        """``file:line: key`` (or ``--set key=value`` for a value given on the command line)."""
        loc = tuple(loc)
        for i in range(len(loc), 0, -1):
            if loc[:i] in self.overrides:
                return f"{self.path.name}: {dotted(loc)} (from --set {self.overrides[loc[:i]]})"
        n = self.line(loc)
        spot = f"{self.path}:{n}" if n else str(self.path)
        return f"{spot}: {dotted(loc)}" if loc else spot

    def error(self, loc: Loc, message: str) -> DefinitionError:
        return DefinitionError(f"{self.where(loc)}: {message}")


def _walk_yaml(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                here = (*loc, key.value)
                lines.setdefault(here, key.start_mark.line + 1)
                _walk_yaml(value, here, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            here = (*loc, i)
            lines.setdefault(here, item.start_mark.line + 1)
            _walk_yaml(item, here, lines)


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a silent overwrite hides a mistake)."""


def _mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *base" merges a mapping; its keys may be overridden here
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    out: dict[Any, Any] = loader.construct_mapping(node, deep=deep)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
# YAML 1.1 reads on/off/yes/no as booleans (so the key "on:" would become True); as in YAML
# 1.2, only true and false are booleans here.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


_TOML_PART = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^.]+)\s*(?:\.|$)')


def _toml_key(text: str) -> list[str]:
    """``groups."a.b".cpus`` -> ["groups", "a.b", "cpus"] (dots inside quotes are kept)."""
    return [m.group(1).strip().strip("\"'") for m in _TOML_PART.finditer(text.strip())]


def _toml_lines(text: str) -> dict[Loc, int]:
    lines: dict[Loc, int] = {}
    table: Loc = ()
    counts: dict[Loc, int] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        m = _TABLE.match(raw)
        if m:
            path: Loc = tuple(_toml_key(m.group(2)))
            if m.group(1) == "[[":
                i = counts.get(path, 0)
                counts[path] = i + 1
                lines.setdefault(path, n)
                path = (*path, i)
            table = path
            lines.setdefault(table, n)
            continue
        k = _KEY.match(raw)
        if k:
            lines.setdefault((*table, *_toml_key(k.group(1))), n)
    return lines


def _deep(p: Path, line: int | None) -> DefinitionError:
    at = f":{line}" if line else ""
    return DefinitionError(
        f"{p}{at}: the data nests more than {MAX_DEPTH} levels deep (lists and mappings inside "
        f"each other); config files may nest at most {MAX_DEPTH} levels"
    )


def _line(ev: yaml.Event) -> int:
    return ev.start_mark.line + 1 if ev.start_mark is not None else 0


def _guard_yaml(text: str, p: Path) -> None:
    """Refuse, before anything is built, YAML whose aliases would expand it (a "billion
    laughs": ten aliases of ten aliases of ... are a few lines and a billion values), refer to
    themselves, or that nests too deep for the recursive composer. PyYAML's parser is a state
    machine: its events are read one at a time, in memory that does not grow with the
    expansion. Each anchor's size counts the values its aliases stand for."""
    sizes: dict[str, int] = {}  # anchor -> how many values it stands for, aliases expanded
    open_: list[list[Any]] = []  # collections being read: [values so far, anchor]
    added = 0
    starts = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
    ends = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    for ev in yaml.parse(text, Loader=_Loader):
        n = 0
        if isinstance(ev, starts):
            open_.append([1, ev.anchor])
            if len(open_) > MAX_DEPTH:
                raise _deep(p, _line(ev))
            continue
        if isinstance(ev, ends):
            n, anchor = open_.pop()
            if anchor is not None:
                sizes[anchor] = n
        elif isinstance(ev, yaml.ScalarEvent):
            n = 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        elif isinstance(ev, yaml.AliasEvent):
            name = ev.anchor or ""
            if name not in sizes and any(o[1] == name for o in open_):
                raise DefinitionError(
                    f"{p}:{_line(ev)}: the alias *{name} is inside the value of its own anchor "
                    f"&{name} (a recursive alias); write the value out"
                )
            n = sizes.get(name, 1)  # an undefined alias: the composer names it
            added += n
            if added > MAX_ALIAS_VALUES:
                raise DefinitionError(
                    f"{p}:{_line(ev)}: the aliases (*{name} and the ones "
                    f'before it) stand for more than {MAX_ALIAS_VALUES:,} values (a "billion '
                    'laughs"); shoal refuses such files. Write the values out, or refer to '
                    "each anchor fewer times"
                )
        else:
            continue
        if open_:
            open_[-1][0] += n


def _depth(data: Any) -> int:
    """How deep lists and mappings nest in ``data`` (iteratively: no recursion limit)."""
    deepest = 0
    todo = [(data, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            todo.extend((x, level + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


def read(path: str | Path) -> Source:
    """Read a config file; syntax errors name the line (and column) and what to fix."""
    p = Path(path)
    kind = KINDS.get(p.suffix.lower())
    if kind is None:
        raise DefinitionError(
            f"{p}: shoal reads .yaml/.yml, .json and .toml config files (or a .py script)"
        )
    try:
        text = p.read_text()
    except OSError as err:
        raise DefinitionError(f"{p}: cannot read it: {err.strerror or err}") from None
    lines: dict[Loc, int] = {}
    if kind == "toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise DefinitionError(f"{p}: not valid TOML: {err}") from None
        except RecursionError:
            raise _deep(p, None) from None
        if _depth(data) > MAX_DEPTH:
            raise _deep(p, None)
        lines = _toml_lines(text)
    elif kind == "json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except DefinitionError as err:
            raise DefinitionError(f"{p}: {err}") from None
        except json.JSONDecodeError as err:
            raise DefinitionError(
                f"{p}:{err.lineno}: not valid JSON at column {err.colno}: {err.msg}"
            ) from None
        except RecursionError:
            raise _deep(p, None) from None
        if _depth(data) > MAX_DEPTH:
            raise _deep(p, None)
        try:  # JSON is (nearly always) YAML too: borrow PyYAML's line numbers
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            if node is not None:
                _walk_yaml(node, (), lines)
        except yaml.YAMLError:
            pass
    else:
        try:
            _guard_yaml(text, p)  # before composing: that recurses, and expands aliases
            node = yaml.compose(text, Loader=_Loader)
            data = yaml.load(text, Loader=_Loader) if node is not None else None
            if node is not None:
                _walk_yaml(node, (), lines)
        except RecursionError:  # not expected after the guard; say what it means anyway
            raise _deep(p, None) from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f":{mark.line + 1}" if mark is not None else ""
            what = getattr(err, "problem", None) or str(err)
            raise DefinitionError(f"{p}{at}: not valid YAML: {what}") from None
    if not isinstance(data, dict):
        raise DefinitionError(f"{p}: the file must hold a mapping (keys and values) at the top")
    return Source(p, data, kind, lines)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DefinitionError(f"duplicate key {key!r}: each key may appear once")
        out[key] = value
    return out


def suggest(word: object, known: Iterable[str]) -> str:
    """``"; did you mean 'cpus'?"`` for a close valid key, else ``""``."""
    return hint(word, known)


def parse_set(text: str) -> tuple[list[str | int], Any]:
    """``relax.cpus=4`` -> (["relax", "cpus"], 4); the value is read as YAML (4, 1.5, [1, 2])."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise DefinitionError(f"--set {text!r}: write KEY=VALUE, e.g. --set relax.cpus=4")
    names = [k.strip() for k in key.split(".")]
    if any(not k for k in names):
        raise DefinitionError(f"--set {text!r}: the key has an empty part")
    parts: list[str | int] = [int(k) if k.isdigit() else k for k in names]  # rules.0.times
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def assign(src: Source, loc: Sequence[str | int], value: Any, text: str) -> None:
    """Set ``value`` at ``loc`` in the data, creating mappings on the way."""
    node = src.data
    for i, part in enumerate(loc[:-1]):
        if isinstance(node, list):
            if not isinstance(part, int) or not 0 <= part < len(node):
                raise DefinitionError(f"--set {text}: {dotted(tuple(loc[: i + 1]))} is not there")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise DefinitionError(
                f"--set {text}: {dotted(tuple(loc[:i]))} is a value, not a mapping with keys"
            )
        node = node.setdefault(part, {})
    last = loc[-1]
    fits = isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node)
    if fits or isinstance(node, dict):
        node[last] = value
    else:
        raise DefinitionError(f"--set {text}: {dotted(tuple(loc[:-1]))} is not a mapping")
    src.overrides[tuple(loc)] = text
