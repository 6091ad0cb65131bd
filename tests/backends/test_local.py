"""The local backend against the conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.backends.local import LocalBackend

from .conformance import BackendContract


class TestLocalConformance(BackendContract):
    @pytest.fixture
    def backend(self, rundir: Path) -> Iterator[LocalBackend]:
        b = LocalBackend(cpus=4, pin="fold")
        b.start(rundir)
        try:
            yield b
        finally:
            b.close()
