"""State in, text out: every screen of canhazgpu, as pure functions (no I/O).

- status: the pool as lines (the documents' format, parsed by users' scripts), the table,
  JSON and the summary (docs/status.md);
- events: one human line per event;
- tables: the column layout they share (fitted to the terminal), the queue and the report.
"""

from .events import describe, line
from .status import (JSON_VERSION, render_json, render_lines, render_summary, render_table,
                     summary_counts)
from .tables import queue_json, render_queue, render_report

__all__ = ["JSON_VERSION", "describe", "line", "queue_json", "render_json", "render_lines",
           "render_queue",
           "render_report", "render_summary", "render_table", "summary_counts"]
