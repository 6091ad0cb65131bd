"""Remote hosts: where a cluster is reached (anything OpenSSH accepts), its batch system,
the folder runs go to there, what to run before shoal (modules, environments), and default
batch options. Kept in ``hosts.yaml`` in shoal's config folder (``$SHOAL_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/shoal``, else ``~/.config/shoal``), private to the user; no password or
secret is ever stored (OpenSSH's agent, keys and config do that).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoal.batch import Kind
from shoal.errors import DefinitionError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A folder on the host may name variables ($SCRATCH, ${WORK}) and ~; nothing a shell would run
UNSAFE = re.compile(r"[`;&|<>\n\r]|\$\(")


class Host(BaseModel):
    """One remote host, as ``shoal host add`` records it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    ssh: str = Field(description="the destination: user@host, or a Host of ~/.ssh/config")
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

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("use letters, digits and _.- (at most 64), starting with one")
        return v

    @field_validator("ssh")
    @classmethod
    def _ssh(cls, v: str) -> str:
        if not v or v.startswith("-") or any(c.isspace() for c in v):
            raise ValueError("give user@host or an ssh config alias (no spaces, no leading -)")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str) -> str:
        if not v or UNSAFE.search(v):
            raise ValueError(
                "a folder, which may use $VARIABLES and ~ but nothing a shell would run "
                "(no ` ; & | < > $( or newlines)"
            )
        return v

    @field_validator("ssh_options")
    @classmethod
    def _options(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for o in v:
            if "=" not in o or o.startswith("-") or "\n" in o:
                raise ValueError(f"{o!r}: write ssh options as Key=value (ssh -o Key=value)")
        return v


def config_dir() -> Path:
    """shoal's config folder (created private to the user when written)."""
    given = os.environ.get("SHOAL_CONFIG_DIR")
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "shoal"


def _file() -> Path:
    return config_dir() / "hosts.yaml"


def load() -> dict[str, Host]:
    """Every host recorded, by name."""
    path = _file()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        raise DefinitionError(f"cannot read {path}: {err}. Fix or remove the file") from None
    if not isinstance(raw, dict):
        raise DefinitionError(f"{path} is not a mapping of host names to hosts")
    out = {}
    for name, fields in raw.items():
        try:
            out[str(name)] = Host(name=str(name), **(fields or {}))
        except (ValidationError, TypeError) as err:
            raise DefinitionError(f"{path}: host {name!r}: {_words(err)}") from None
    return out


def find(name: str) -> Host:
    hosts = load()
    if name not in hosts:
        known = ", ".join(sorted(hosts)) or "none yet"
        raise DefinitionError(
            f"no host {name!r} (known: {known}); add it with shoal host add {name} --ssh USER@HOST"
        )
    return hosts[name]


def make(**fields: Any) -> Host:
    """A host from the command line's fields, or a DefinitionError that says what is wrong."""
    try:
        return Host(**fields)
    except ValidationError as err:
        raise DefinitionError(f"host {fields.get('name')!r}: {_words(err)}") from None


def save(host: Host, replace: bool = False) -> Path:
    """Record ``host``; an existing one of that name is replaced only when asked. The file is
    written whole, then moved into place, readable by the user only."""
    hosts = load()
    if host.name in hosts and not replace:
        raise DefinitionError(
            f"host {host.name!r} exists; give --replace to replace it, or shoal host remove "
            f"{host.name} first"
        )
    hosts[host.name] = host
    return _write(hosts)


def remove(name: str) -> Path:
    hosts = load()
    if name not in hosts:
        raise DefinitionError(f"no host {name!r} to remove")
    del hosts[name]
    return _write(hosts)


def _write(hosts: dict[str, Host]) -> Path:
    path = _file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {
        name: h.model_dump(mode="json", exclude={"name"}, exclude_defaults=True)
        for name, h in sorted(hosts.items())
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


def _words(err: ValidationError | TypeError) -> str:
    if isinstance(err, TypeError):
        return str(err)
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in err.errors()
    )
