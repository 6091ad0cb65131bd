"""What an agent may reach: paths under the server's base folder (checked after resolving
links), runs there, and writes only when the server was started with ``--allow-write``.
Each refusal is a structured error an agent can act on: what is wrong, where, what to do."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import ShoalError


class Refused(ShoalError):
    """A tool call refused: ``kind`` (bad_argument, outside_base, read_only, not_found,
    not_allowed), ``what``, ``where`` (the argument) and ``fix``."""

    def __init__(self, kind: str, what: str, where: str, fix: str) -> None:
        super().__init__(what)
        self.kind, self.what, self.where, self.fix = kind, what, where, fix

    def as_json(self) -> str:
        data = {"error": self.kind, "what": self.what, "where": self.where, "fix": self.fix}
        return json.dumps(data)


@dataclass(frozen=True)
class Guard:
    """The server's limits: ``base`` (resolved) and whether writes are allowed."""

    base: Path
    write: bool = False

    def path(self, given: str, where: str, exists: bool = True) -> Path:
        """``given`` (relative: to the base) resolved, links followed; refused when it lies
        outside the base, or (``exists``) is missing."""
        if not isinstance(given, str) or not given or "\0" in given:
            raise Refused("bad_argument", f"{given!r} is not a path", where, "give a path")
        path = (self.base / given).resolve()
        if not path.is_relative_to(self.base):
            raise Refused(
                "outside_base",
                f"{given!r} lies outside the folder this server serves ({self.base})",
                where,
                f"give a path under {self.base} (relative paths start there)",
            )
        if exists and not path.exists():
            raise Refused(
                "not_found",
                f"{given!r} does not exist under {self.base}",
                where,
                "list_runs shows the runs; check the spelling",
            )
        return path

    def run(self, given: str | None, where: str = "run") -> Path:
        """A run directory under the base: ``given``, or the newest run there when None."""
        from shoal.store.runs import find_runs

        if given is None or given == "":
            found = find_runs(self.base, 3)
            if not found:
                raise Refused(
                    "not_found",
                    f"no runs under {self.base}",
                    where,
                    "submit one first (submit), or check the server's --base",
                )
            return found[0]
        path = self.path(given, where)
        if not (path / "shoal.db").is_file():
            raise Refused(
                "not_found",
                f"{given!r} is not a run directory (no shoal.db)",
                where,
                "give a run's folder as list_runs shows it",
            )
        return path

    def writing(self, tool: str) -> None:
        if not self.write:
            raise Refused(
                "read_only",
                f"{tool} changes runs, and this server is read-only",
                tool,
                "ask the user to start it with shoal mcp --allow-write",
            )
