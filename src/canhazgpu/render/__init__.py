"""State in, text out: every screen of canhazgpu, as pure functions (no I/O).

- status: the pool as lines (the documents' format, parsed by users' scripts), the table,
  JSON and the summary (docs/status.md);
- events: one human line per event;
- tables: the column layout they share (fitted to the terminal), the queue and the report.

A name is imported from its module when first used (`render.render_json`): a command
loads the renderers it prints with, not all of them (start-up time).
"""

from importlib import import_module

_MODULES = {"events": ("describe", "line"),
            "status": ("JSON_VERSION", "render_json", "render_lines", "render_summary",
                       "render_table", "summary_counts"),
            "tables": ("queue_json", "render_queue", "render_report")}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
