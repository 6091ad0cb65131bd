"""Remote hosts: where a cluster is reached (anything OpenSSH accepts), its batch system,
the folder runs go to there, what to run before shoal (modules, environments), and default
batch options. Kept in ``hosts.yaml`` in shoal's config folder (``$SHOAL_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/shoal``, else ``~/.config/shoal``), private to the user, or in a
project's ``shoal-hosts.yaml`` in the folder shoal runs from, to share with the project. No
password or secret is ever stored (OpenSSH's agent, keys and config do that).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from shoal.batch import Kind
from shoal.errors import DefinitionError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A folder on the host may name variables ($SCRATCH, ${WORK}) and ~; nothing a shell would run
UNSAFE = re.compile(r"[`;&|<>\n\r]|\$\(")


@dataclass(frozen=True)
class Host:
    """One remote host, as ``shoal host add`` records it. (A dataclass, not a pydantic
    model: every remote command loads it, and this keeps ``shoal remote status`` quick.)"""

    name: str
    ssh: str  # the destination: user@host, or a Host of ~/.ssh/config
    port: int | None = None
    identity: str | None = None  # a private key file (ssh -i)
    proxy_jump: str | None = None  # ssh -J
    ssh_options: tuple[str, ...] = ()  # more ssh -o options, as "Key=value"
    batch: Kind = Kind.SHELL
    workdir: str = "shoal"  # relative: to the home folder there
    pre_run: tuple[str, ...] = ()  # lines run before shoal there (modules, environments)
    account: str | None = None
    queue: str | None = None
    options: tuple[str, ...] = ()  # batch directives added to every job
    accept_new_host_key: bool = False  # trust a host key seen for the first time
    known_hosts: str | None = None  # a known_hosts file instead of the user's own

    def __post_init__(self) -> None:
        if not isinstance(self.batch, Kind):
            try:
                object.__setattr__(self, "batch", Kind(self.batch))
            except ValueError:
                kinds = ", ".join(k.value for k in Kind)
                raise DefinitionError(f"host {self.name!r}: batch: one of {kinds}") from None
        problems = _problems(self)
        if problems:
            raise DefinitionError(f"host {self.name!r}: " + "; ".join(problems))

    def as_dict(self, defaults: bool = True) -> dict[str, Any]:
        """The record as plain data (without the fields left at their defaults, unless
        ``defaults``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not defaults and value == f.default:
                continue
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value.value if isinstance(value, Kind) else value
        return out

    def but(self, **changes: Any) -> Host:
        """A copy with ``changes``."""
        return replace(self, **changes)


def _problems(h: Host) -> list[str]:
    """What is wrong with a host record, in words."""
    out = []
    if not isinstance(h.name, str) or not NAME.match(h.name):
        out.append("name: use letters, digits and _.- (at most 64), starting with one")
    if not h.ssh or h.ssh.startswith("-") or any(c.isspace() for c in h.ssh):
        out.append("ssh: give user@host or an ssh config alias (no spaces, no leading -)")
    if h.port is not None and not (isinstance(h.port, int) and 0 < h.port < 65536):
        out.append(f"port: {h.port!r} is not a port number")
    if not h.workdir or UNSAFE.search(h.workdir):
        out.append(
            "workdir: a folder, which may use $VARIABLES and ~ but nothing a shell would run "
            "(no ` ; & | < > $( or newlines)"
        )
    for o in h.ssh_options:
        if "=" not in o or o.startswith("-") or "\n" in o:
            out.append(f"ssh_options: {o!r}: write ssh options as Key=value (ssh -o Key=value)")
    for line in (*h.pre_run, *h.options):
        if "\n" in line:
            out.append(f"{line!r} holds a newline: give one line each")
    return out


def config_dir() -> Path:
    """shoal's config folder (created private to the user when written)."""
    given = os.environ.get("SHOAL_CONFIG_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "shoal"


PROJECT = "shoal-hosts.yaml"  # a project's hosts, in the folder shoal is run from


def _file(project: bool = False) -> Path:
    return Path.cwd() / PROJECT if project else config_dir() / "hosts.yaml"


def load() -> dict[str, Host]:
    """Every host recorded, by name: the user's (``hosts.yaml`` in the config folder) and
    the project's (``shoal-hosts.yaml`` in the current folder). A name in both is an error:
    a project must not redirect a host the user defined."""
    mine, project = _read(_file()), _read(_file(project=True))
    both = sorted(set(mine) & set(project))
    if both:
        raise DefinitionError(
            f"host {both[0]!r} is defined in {_file()} and in {_file(project=True)}: rename "
            "it in one of them"
        )
    return {**mine, **project}


def where(name: str) -> Path:
    """The file that defines host ``name``."""
    return _file(project=True) if name in _read(_file(project=True)) else _file()


def _read(path: Path) -> dict[str, Host]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        raise DefinitionError(f"cannot read {path}: {err}. Fix or remove the file") from None
    if not isinstance(raw, dict):
        raise DefinitionError(f"{path} is not a mapping of host names to hosts")
    out = {}
    for name, given in raw.items():
        if not isinstance(given, dict | None):
            raise DefinitionError(
                f"{path}: host {name!r} must be a mapping of fields (ssh: ..., batch: ...), "
                f"not {type(given).__name__}"
            )
        try:
            out[str(name)] = make(name=str(name), **(given or {}))
        except DefinitionError as err:
            raise DefinitionError(f"{path}: {err}") from None
    return out


def find(name: str) -> Host:
    hosts = load()
    if name not in hosts:
        known = ", ".join(sorted(hosts)) or "none yet"
        raise DefinitionError(
            f"no host {name!r} (known: {known}); add it with shoal host add {name} --ssh USER@HOST"
        )
    return hosts[name]


def make(**given: Any) -> Host:
    """A host from plain fields (the command line's, the file's), or a DefinitionError that
    says what is wrong."""
    known = {f.name for f in fields(Host)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise DefinitionError(
            f"host {given.get('name')!r}: unknown field(s) {', '.join(unknown)} (known: "
            f"{', '.join(sorted(known))})"
        )
    for key in ("ssh_options", "pre_run", "options"):
        if key in given:
            value = given[key]
            given[key] = (value,) if isinstance(value, str) else tuple(value)
    try:
        return Host(**given)
    except TypeError as err:
        raise DefinitionError(f"host {given.get('name')!r}: {err}") from None


def save(host: Host, replace: bool = False, project: bool = False) -> Path:
    """Record ``host`` (in the project's file with ``project``); an existing one of that
    name is replaced only when asked. The file is written whole, then moved into place."""
    hosts = _read(_file(project))
    other = _read(_file(not project))
    if host.name in other:
        raise DefinitionError(
            f"host {host.name!r} is defined in {_file(not project)} already: choose another "
            "name, or remove it there first"
        )
    if host.name in hosts and not replace:
        raise DefinitionError(
            f"host {host.name!r} exists; give --replace to replace it, or shoal host remove "
            f"{host.name} first"
        )
    hosts[host.name] = host
    return _write(hosts, project)


def remove(name: str) -> Path:
    path = where(name)
    hosts = _read(path)
    if name not in hosts:
        raise DefinitionError(f"no host {name!r} to remove")
    del hosts[name]
    return _write(hosts, path.name == PROJECT)


def _write(hosts: dict[str, Host], project: bool = False) -> Path:
    """The user's file readable by the user only; a project's (no secrets are ever in
    either) readable by all, to be shared with the project."""
    path = _file(project)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {}
    for name, h in sorted(hosts.items()):
        record = h.as_dict(defaults=False)
        record.pop("name", None)
        data[name] = record
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if project else 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path
