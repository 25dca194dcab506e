"""How ``history replay`` shows a replayed moment: a terminal timeline, JSON, and one HTML page.

The HTML page is self-contained (no network, no external file): the state is embedded as JSON and
a small inline script draws the Gantt chart as SVG when the page is opened, one bar per vertex.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from buildsvc.events.envelope import format_time
from buildsvc.projections.replay import ReplayState, VertexState

__all__ = ["gantt_html", "print_timeline", "replay_json"]

_STYLE = {
    "completed": "green",
    "cached": "blue",
    "running": "yellow",
    "failed": "red",
    "interrupted": "magenta",
    "queued": "dim",
}
_BAR_WIDTH = 40


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _vertex_json(v: VertexState) -> dict[str, Any]:
    return {
        "vertex": v.vertex,
        "name": v.name,
        "status": v.status,
        "worker": v.worker,
        "runs": v.runs,
        "started_at": _time(v.started_at),
        "ended_at": _time(v.ended_at),
        "exit_code": v.exit_code,
        "error": v.error,
        "snapshot_id": v.snapshot_id,
    }


def replay_json(state: ReplayState) -> dict[str, Any]:
    """The replayed moment as plain JSON data (what ``--format json`` prints and the page embeds)."""
    return {
        "build_ref": state.build_ref,
        "position": state.position,
        "at": _time(state.at),
        "status": state.status,
        "frontend": state.frontend,
        "actor": state.actor,
        "requested_at": _time(state.requested_at),
        "started_at": _time(state.started_at),
        "ended_at": _time(state.ended_at),
        "error": state.error,
        "vertices": [_vertex_json(v) for v in state.vertices.values()],
        "refs": [
            {
                "ref_id": r.ref_id,
                "snapshot_id": r.snapshot_id,
                "holder": f"{r.holder_kind}:{r.holder_id}",
                "build_ref": r.build_ref,
                "acquired_position": r.acquired_position,
            }
            for r in state.refs.values()
        ],
        "snapshots": [
            {
                "snapshot_id": s.snapshot_id,
                "worker": s.worker,
                "parent": s.parent,
                "kind": s.kind,
                "size_bytes": s.size_bytes,
                "created_position": s.created_position,
            }
            for s in state.snapshots.values()
        ],
        "cache_records": [
            {
                "cache_key": c.cache_key,
                "vertex": c.vertex,
                "snapshot_id": c.snapshot_id,
                "build_ref": c.build_ref,
                "added_position": c.added_position,
            }
            for c in state.cache_records.values()
        ],
    }


def _bar(v: VertexState, origin: datetime, now: datetime, span: float) -> Text:
    if v.started_at is None:
        return Text("")
    start = (v.started_at - origin).total_seconds() / span
    end = ((v.ended_at or now) - origin).total_seconds() / span
    left = min(int(start * _BAR_WIDTH), _BAR_WIDTH - 1)
    width = max(1, int(end * _BAR_WIDTH) - left)
    return Text(" " * left + "█" * width, style=_STYLE.get(v.status, ""))


def print_timeline(console: Console, state: ReplayState) -> None:
    """The build at the cut, its vertices as bars on one time axis, then the daemon's state."""
    console.print(
        Text(
            f"build {state.build_ref} [{state.status}] at position {state.position}"
            f" ({_time(state.at) or 'before its first event'})"
        )
    )
    if state.error:
        console.print(Text(f"error: {state.error}"))
    origin = state.requested_at or state.at
    now = state.at
    if origin is not None and now is not None:
        span = max((now - origin).total_seconds(), 1e-6)
        table = Table(show_edge=False, header_style="bold", title=f"vertices (0 .. {span:.3f}s)")
        for column in ("VERTEX", "NAME", "STATUS", "RUNS", "WORKER", "TIMELINE"):
            table.add_column(column)
        for v in state.vertices.values():
            table.add_row(
                v.vertex[:19],
                v.name,
                Text(v.status, style=_STYLE.get(v.status, "")),
                str(v.runs),
                v.worker,
                _bar(v, origin, now, span),
            )
        console.print(table)
    held = Table(show_edge=False, header_style="bold", title=f"refs held ({len(state.refs)})")
    for column in ("REF", "SNAPSHOT", "HOLDER", "BUILD"):
        held.add_column(column)
    for r in state.refs.values():
        held.add_row(r.ref_id, r.snapshot_id, f"{r.holder_kind}:{r.holder_id}", r.build_ref)
    console.print(held)
    snaps = Table(show_edge=False, header_style="bold", title=f"snapshots ({len(state.snapshots)})")
    for column in ("SNAPSHOT", "WORKER", "KIND", "PARENT", "SIZE"):
        snaps.add_column(column)
    for s in state.snapshots.values():
        snaps.add_row(s.snapshot_id, s.worker, s.kind, s.parent or "", str(s.size_bytes))
    console.print(snaps)
    cache = Table(show_edge=False, header_style="bold", title=f"cache records ({len(state.cache_records)})")
    for column in ("CACHE KEY", "VERTEX", "SNAPSHOT", "BUILD"):
        cache.add_column(column)
    for c in state.cache_records.values():
        cache.add_row(c.cache_key[:26], c.vertex[:19], c.snapshot_id, c.build_ref)
    console.print(cache)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>buildsvc replay {title}</title>
<style>
body {{ font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; font-family: monospace; }}
.completed {{ fill: #2e7d32; }} .cached {{ fill: #1565c0; }} .running {{ fill: #f9a825; }}
.failed {{ fill: #c62828; }} .interrupted {{ fill: #8e24aa; }} .queued {{ fill: #bdbdbd; }}
</style></head>
<body>
<h1>build {title}</h1>
<p id="summary"></p>
<div id="gantt"></div>
<h2>refs held</h2><table id="refs"></table>
<h2>snapshots</h2><table id="snapshots"></table>
<h2>cache records</h2><table id="cache"></table>
<script type="application/json" id="replay-data">{data}</script>
<script>
(function () {{
  "use strict";
  var state = JSON.parse(document.getElementById("replay-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  function ms(t) {{ return t ? Date.parse(t) : null; }}
  document.getElementById("summary").textContent = state.status + " at position " + state.position +
    " (" + (state.at || "before its first event") + ")" + (state.error ? " - " + state.error : "");
  var origin = ms(state.requested_at) || ms(state.at) || 0, now = ms(state.at) || origin;
  var span = Math.max(now - origin, 1), labelW = 320, chartW = 640, rowH = 22;
  var svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", labelW + chartW + 20);
  svg.setAttribute("height", rowH * (state.vertices.length + 1));
  state.vertices.forEach(function (v, i) {{
    var y = rowH * i + 4;
    var label = document.createElementNS(SVG, "text");
    label.setAttribute("x", 0); label.setAttribute("y", y + 13);
    label.textContent = (v.name || v.vertex).slice(0, 48);
    svg.appendChild(label);
    var start = ms(v.started_at), end = ms(v.ended_at) || now;
    var x = start === null ? 0 : (start - origin) / span * chartW;
    var w = start === null ? chartW : Math.max((end - start) / span * chartW, 3);
    var bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("class", "bar " + v.status);
    bar.setAttribute("data-vertex", v.vertex);
    bar.setAttribute("data-status", v.status);
    bar.setAttribute("x", labelW + x); bar.setAttribute("y", y);
    bar.setAttribute("width", w); bar.setAttribute("height", rowH - 8);
    if (start === null) {{ bar.setAttribute("opacity", "0.3"); }}
    var tip = document.createElementNS(SVG, "title");
    tip.textContent = v.vertex + " " + v.status + (v.worker ? " on " + v.worker : "") +
      (v.runs > 1 ? " (" + v.runs + " runs)" : "") + (v.error ? ": " + v.error : "");
    bar.appendChild(tip);
    svg.appendChild(bar);
  }});
  document.getElementById("gantt").appendChild(svg);
  function fill(id, rows, keys) {{
    var table = document.getElementById(id), head = table.insertRow();
    keys.forEach(function (k) {{
      var th = document.createElement("th"); th.textContent = k; head.appendChild(th);
    }});
    rows.forEach(function (r) {{
      var tr = table.insertRow();
      keys.forEach(function (k) {{ tr.insertCell().textContent = r[k] === null ? "" : String(r[k]); }});
    }});
  }}
  fill("refs", state.refs, ["ref_id", "snapshot_id", "holder", "build_ref"]);
  fill("snapshots", state.snapshots, ["snapshot_id", "worker", "kind", "parent", "size_bytes"]);
  fill("cache", state.cache_records, ["cache_key", "vertex", "snapshot_id", "build_ref"]);
}})();
</script>
</body></html>
"""


def gantt_html(state: ReplayState) -> str:
    """One self-contained HTML page: the Gantt chart of the vertices and the daemon's state."""
    # "</" would end the script element early; JSON allows "\\/" for "/".
    data = json.dumps(replay_json(state), ensure_ascii=True).replace("</", "<\\/")
    return _PAGE.format(title=html.escape(state.build_ref), data=data)
