"""`canhazgpu hosts`: every host sharing this Redis; and the host choice (`--all-hosts`,
`--host a,b`) of the views that span hosts (status, queue, report, events): docs/hosts.md."""

from __future__ import annotations

import asyncclick as click

from . import output
from .main import cli



def all_hosts_option(what: str):
    return click.option("--all-hosts", "all_hosts", is_flag=True,
                        help=f"{what} of every registered host (see 'canhazgpu hosts'); "
                             "--host a,b for some.")


def spanned(state, all_hosts: bool) -> list[str] | None:
    """The hosts a view spans: None for the one host of plain commands; [] with --all-hosts
    means every registered host, --host a,b those."""
    named = state.config.host
    if all_hosts:
        return []
    if named and "," in named:
        return [h.strip() for h in named.split(",") if h.strip()]
    return None


def names(hosts: list[str]) -> list[str] | None:
    """spanned()'s answer as hosts.py takes it: None for every registered host."""
    return hosts or None


def ago(seconds: float | None) -> str:
    from ..timefmt import coarse
    return "-" if seconds is None else f"{coarse(seconds)} ago"


def title(host: str, daemon: str, last_seen_s: float | None) -> str:
    """A host's heading in the views across hosts."""
    return f"== {host} (daemon {daemon}, last seen {ago(last_seen_s)})"


@cli.command(epilog="""\b
Examples:
  canhazgpu hosts                       # every host: GPUs, queue, daemon, last seen
  canhazgpu hosts --json | jq -r '.hosts[] | select(.daemon != "up") | .host'
  canhazgpu status --all-hosts          # every host's GPUs (also queue, report, events)
  canhazgpu status --host gpu1,gpu2     # some hosts
Set-up for a team and failure modes: canhazgpu help hosts
""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document (canhazgpu help hosts).")
@click.pass_obj
async def hosts(state, as_json):
    """Every host sharing this Redis: GPUs available/reserved/unreserved, queue, daemon."""
    doc = await state.hosts.document()
    if as_json:
        output.emit_json(doc)
        return
    width = output.width()
    output.emit(render_hosts(doc["hosts"], width))


def render_hosts(rows: list[dict], width: int | None = None) -> str:
    from ..render.tables import Column, table
    if not rows:
        return ("No hosts registered yet: a host registers with 'canhazgpu admin' and while "
                "its daemon ('canhazgpu serve') runs.")
    # GPU TYPE: the cards' names (status's MODEL is the ML model a process serves)
    columns = (Column("HOST", shrink=2, least=8), Column("GPUS", right=True),
               Column("AVAIL", right=True), Column("RESERVED", right=True),
               Column("UNRESERVED", right=True), Column("QUEUE", right=True),
               Column("DAEMON"), Column("LAST SEEN"), Column("GPU TYPE", shrink=1))
    cells = []
    for r in rows:
        counts = r["gpus"] or {}
        cells.append([r["host"], *(str(counts.get(k, "-")) for k in
                                   ("total", "available", "reserved", "unreserved")),
                      "-" if r["queue"] is None else str(r["queue"]), r["daemon"],
                      ago(r["last_seen_s"]),
                      r["error"] or ", ".join(r["models"]) or "-"])
    return table(columns, cells, width, gap=2)


# ---------------------------------------------------------------------- views across hosts
async def status_of_hosts(state, span: list[str], fmt, as_json: bool, summary: bool) -> None:
    """`status --all-hosts` / `--host a,b`: one section per host; JSON: {"hosts": [...]},
    each entry the single-host document (docs/status.md) with host, daemon and last seen."""
    from .. import hosts as registry
    from .. import render
    now, found = await state.hosts.views(names(span))
    if as_json:
        docs = []
        for hv in found:
            head = {"host": hv.host, "daemon": hv.daemon,
                    "last_seen_ms": hv.entry.get("last_seen_ms")}
            docs.append({**head, **render.render_json(hv.view)} if hv.view
                        else {**head, "error": hv.error})
        output.emit_json({"version": render.JSON_VERSION, "time_ms": now, "hosts": docs})
        return
    mode = "summary" if summary else (fmt or ("table" if output.is_tty() else "lines"))
    width = output.width()
    sections = []
    for hv in found:
        row = registry.summary(hv, now)
        if hv.view is None:
            body = f"Error: {hv.error}"
        elif mode == "summary":
            body = render.render_summary(hv.view)
        elif mode == "table":
            body = render.render_table(hv.view, color=output.use_color(), width=width)
        else:
            body = render.render_lines(hv.view)
        sections.append(f"{title(hv.host, hv.daemon, row['last_seen_s'])}\n{body}")
    output.emit("\n\n".join(sections) if sections else render_hosts([]))


async def queue_of_hosts(state, span: list[str], as_json: bool) -> None:
    """`queue --all-hosts`: each host's queue; JSON {"hosts": [{"host", "queue": [...]}]}."""
    from ..render import queue_json, render_queue
    found = [(host, queue_json(now, waiters))
             for host, now, waiters in await state.hosts.queues(names(span))]
    if as_json:
        output.emit_json({"hosts": [{"host": h, "queue": rows} for h, rows in found]})
        return
    width = output.width()
    output.emit("\n\n".join(f"== {h}\n{render_queue(rows, width)}" for h, rows in found)
                if found else render_hosts([]))


async def report_of_hosts(state, span: list[str], days: float, as_json: bool) -> None:
    """`report --all-hosts`: GPU hours per user over all the hosts together."""
    from ..render import render_report
    data = await state.hosts.report(days, names(span))
    if as_json:
        output.emit_json(data)
    else:
        output.emit(f"{render_report(data)}\nHosts: {', '.join(data['hosts']) or 'none'}")
