"""Text tables: columns as wide as their values, narrowed to fit the terminal. Pure.

Used by the status table, the queue, the report and the hosts. Without a width limit (a
pipe, a file) nothing is ever cut. With one, the padding goes first (a column's documented
minimum width); then, one step at a time in the order the columns give (`shrink` and `drop`
ranks, one sequence for both), a column is cut down to its least width or dropped, until
the table fits. Columns with neither rank are always shown whole. A cut value ends in an
ellipsis. What cannot fit that way overflows.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..model import Value, fill
from ..text import printable
from ..timefmt import short

ELLIPSIS = "…"
RESET = "\033[0m"


class Column(Value):
    """A column of a table and how it gives way on a narrow terminal."""

    __slots__ = ("title", "minimum", "shrink", "drop", "least", "right")

    def __init__(
        self,
        title: str,
        minimum: int = 0,  # padded to at least this when there is room (the documents' widths)
        shrink: int = 0,  # step at which it may be cut (down to `least`); 0: never cut
        drop: int = 0,  # step at which it may be left out; 0: always shown
        least: int = 0,  # the narrowest a cut leaves it (never below its title)
        right: bool = False,  # right-aligned (numbers)
    ) -> None:
        fill(self, locals())


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], limit: int | None = None,
        gap: int = 1) -> list[int | None]:
    """The width of each column (None: left out), the table at most `limit` characters wide
    if it can be: the fewest steps (cut a column, drop a column, in their ranks' order)
    that make it fit; the cut columns give up only what is needed, the first cut first."""
    natural = [max([len(col.title)] + [len(printable(row[i])) for row in rows])
               for i, col in enumerate(columns)]
    padded = [max(n, col.minimum) for n, col in zip(natural, columns)]
    if limit is None or sum(padded) + gap * (len(columns) - 1) <= limit:
        return padded
    steps = sorted([(col.shrink, "shrink", i) for i, col in enumerate(columns) if col.shrink]
                   + [(col.drop, "drop", i) for i, col in enumerate(columns) if col.drop])
    for taken in range(len(steps) + 1):
        dropped = {i for _, kind, i in steps[:taken] if kind == "drop"}
        widths = [None if i in dropped else n for i, n in enumerate(natural)]
        shown = [w for w in widths if w is not None]
        excess = sum(shown) + gap * (len(shown) - 1) - limit
        for _, kind, i in steps[:taken]:
            if kind == "shrink" and i not in dropped and excess > 0:
                give = min(excess, max(0, widths[i] - max(columns[i].least,
                                                          len(columns[i].title))))
                widths[i] -= give
                excess -= give
        if excess <= 0:
            break
    for i, want in enumerate(padded):  # room left over pads back towards the minimums
        if widths[i] is not None and excess < 0:
            grow = max(0, min(-excess, want - widths[i]))
            widths[i] += grow
            excess += grow
    return widths


def cut(text: str, width: int) -> str:
    """`text`, or as much of it as fits in `width` characters with an ellipsis at the end."""
    return text if len(text) <= width else text[:max(0, width - 1)] + ELLIPSIS


def line(cells: Sequence[str], widths: Sequence[int | None], columns: Sequence[Column],
         gap: int = 1, colors: dict[int, str] | None = None) -> str:
    """One row: cells cut and padded to their widths (a column of width None is left out);
    `colors` paints cells by index (the padding stays outside the colour, so columns still
    line up). No trailing spaces."""
    out = []
    for i, (cell, width, col) in enumerate(zip(cells, widths, columns)):
        if width is None:
            continue
        text = cut(printable(cell), width)
        pad = " " * (width - len(text))
        if colors and colors.get(i) and text:
            text = f"{colors[i]}{text}{RESET}"
        out.append(pad + text if col.right else text + pad)
    return (" " * gap).join(out).rstrip()


def rule_cells(widths: Sequence[int | None]) -> list[str]:
    """The dashes under the titles."""
    return ["-" * (w or 0) for w in widths]


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]], limit: int | None = None,
          gap: int = 1, rule: bool = False) -> str:
    """Header, an optional dashes rule, and the rows, without colour."""
    widths = fit(columns, rows, limit, gap)
    head = [line([c.title for c in columns], widths, columns, gap)]
    if rule:
        head.append(line(rule_cells(widths), widths, columns, gap))
    return "\n".join(head + [line(row, widths, columns, gap) for row in rows])


# ---------------------------------------------------------------- the queue (docs/queue.md)
QUEUE_COLUMNS = (Column("POS"), Column("USER"), Column("REQUESTED"), Column("GRANTED"),
                 Column("WAITING"), Column("NOTE", shrink=1))


def queue_json(now_ms: int, waiters: Sequence) -> list[dict]:
    """The queue document (`canhazgpu queue --json`, docs/queue.md) from model.Waiter values
    in arrival order."""
    return [{"position": pos, "id": w.wid, "user": w.user,
             "requested": list(w.ids) if w.ids is not None else w.count,
             "granted": list(w.granted), "waiting_s": round((now_ms - w.enqueued_ms) / 1000, 1),
             "type": w.kind, "note": w.note} for pos, w in enumerate(waiters, 1)]


def render_queue(rows: Sequence[dict], width: int | None = None) -> str:
    """Who waits for what, in order: the rows of `canhazgpu queue --json`."""
    if not rows:
        return "The queue is empty."
    cells = [[str(r["position"]), r["user"],
              f"GPUs {_ids(r['requested'])}" if isinstance(r["requested"], list)
              else f"{r['requested']} GPU(s)",
              _ids(r["granted"]) or "-", short(r["waiting_s"]), " ".join(r["note"].split())]
             for r in rows]
    return table(QUEUE_COLUMNS, cells, width, gap=2)


def _ids(gpus) -> str:
    return ",".join(map(str, gpus))


# ---------------------------------------------------------------- the report (docs/report.md)
REPORT_COLUMNS = (Column("USER", 4), Column("GPU HOURS", 9, right=True),
                  Column("SHARE", 6, right=True), Column("RUN", 4, right=True),
                  Column("MANUAL", 6, right=True))


def render_report(data: dict) -> str:
    """GPU hours per user, from the report document (`canhazgpu report --json`)."""
    days = data["days"]
    head = (f"GPU usage over the last {days:g} day{'' if days == 1 else 's'}: "
            f"{hours(data['total_gpu_hours'])} GPU hours")
    if not data["users"]:
        return f"{head}\nNo reservations in this period."
    cells = [[u["user"], hours(u["gpu_hours"]), f"{u['percent']:.1f}%", str(u["run"]),
              str(u["manual"])] for u in data["users"]]
    idle = ", ".join(f"{u['user']} {u['idle_released']}" for u in data["users"]
                     if u.get("idle_released"))
    tail = f"\nReleased for idleness (reservations): {idle}" if idle else ""
    return f"{head}\n{table(REPORT_COLUMNS, cells, gap=2)}{tail}"


def hours(value: float) -> str:
    """'30.25'; '<0.01' for some use that two decimals would show as none."""
    return "<0.01" if 0 < value < 0.005 else f"{value:.2f}"
