"""shoal for agents: an MCP server (``shoal mcp``, extra ``shoal[mcp]``) that plans, runs,
watches and repairs ensembles, and :func:`ensemble_tool`, which makes a Python function an MCP
tool that runs an ensemble of it. See :mod:`shoal.mcp.server`."""

from __future__ import annotations

from shoal.mcp.ensemble import ensemble_tool, register

__all__ = ["ensemble_tool", "register"]
