"""The jobs listing (`canhazgpu jobs`, docs/jobs.md): job documents in, JSON or text out."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..text import printable
from ..timefmt import coarse
from .tables import Column, table

# On a narrow terminal: the command is cut first, then the name; then the submitted and
# ended times are left out
COLUMNS = (Column("ID", right=True), Column("NAME", shrink=2, least=6),
           Column("STATE"), Column("WHERE"), Column("EXIT", right=True),
           Column("SUBMITTED", drop=4), Column("STARTED"), Column("ENDED", drop=3),
           Column("COMMAND", shrink=1, least=10))


def job_json(doc: dict, position: int | None) -> dict:
    """One job as `jobs --json` prints it (the environment is left out: it may hold secrets)."""
    return {"id": doc["id"], "name": doc.get("name", ""), "state": doc.get("state"),
            "position": position, "gpus": list(doc.get("gpus") or []),
            "requested": doc.get("ids") or doc.get("count"), "after": doc.get("after") or [],
            "exit_code": doc.get("exit_code"), "reason": doc.get("reason", ""),
            "submitted_ms": doc.get("submitted_ms"), "started_ms": doc.get("started_ms"),
            "ended_ms": doc.get("ended_ms"), "argv": list(doc.get("argv") or []),
            "cwd": doc.get("cwd"), "note": doc.get("note", ""), "reservation": doc.get("rid")}


def _ago(now_ms: int, ms: int | None) -> str:
    return "-" if not ms else f"{coarse((now_ms - ms) / 1000)} ago"


def _where(row: dict) -> str:
    if row["state"] == "queued":
        if row["position"]:
            return f"pos {row['position']}"
        return f"after {','.join(map(str, row['after']))}" if row["after"] else "-"
    return f"GPU {','.join(map(str, row['gpus']))}" if row["gpus"] else "-"


def render_jobs(rows: Sequence[dict], now_ms: int, width: int | None = None) -> str:
    """The rows of `jobs --json` as a table, one line each (text made printable)."""
    if not rows:
        return "No jobs (submit one with: canhazgpu submit --gpus 1 -- CMD)."
    cells = [[str(r["id"]), _printable(r["name"]) or "-", r["state"], _where(r),
              "-" if r["exit_code"] is None else str(r["exit_code"]),
              _ago(now_ms, r["submitted_ms"]), _ago(now_ms, r["started_ms"]),
              _ago(now_ms, r["ended_ms"]), _printable(shlex.join(r["argv"]))]
             for r in rows]
    return table(COLUMNS, cells, width, gap=2)


def _printable(text: str) -> str:
    """One line, control characters shown escaped (a name or command line is user text)."""
    return printable(" ".join(text.split()))
