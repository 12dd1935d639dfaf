"""`swarm encode --report-html`: one self-contained page picturing a finished job.

The page is a timeline (one row per peer, split into one lane per slot when a peer ran
attempts at the same time; one bar per chunk attempt, coloured by outcome)
and the per-peer summary, as inline SVG and CSS: no network, no external file, so it can be
mailed or opened from a USB stick. Built from the JSON report (``run_encode``'s return
value) and ``screens.dashboard.summarize``; only ``cli.py`` imports this module.
"""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["OUTCOME_COLOURS", "build_html"]

# Colour-blind-safe (Okabe-Ito) colours, one per attempt outcome; the legend names them
# and each bar's tooltip says its outcome, so colour is never the only cue.
OUTCOME_COLOURS = {
    "ok": "#009E73",
    "failed": "#D55E00",
    "expired": "#E69F00",
    "cancelled": "#999999",
    "running": "#0072B2",
}
ROW_H = 28
BAR_H = 18
LABEL_W = 170
PLOT_W = 860
AXIS_H = 26


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _ticks(span: float) -> list[float]:
    """About eight round tick positions over [0, span]."""
    if span <= 0:
        return [0.0]
    raw = span / 8
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(span / step) + 1)]


def lanes(attempts: list[dict[str, Any]]) -> list[int]:
    """A lane for each attempt (in order given) so that no two in a lane overlap in time.

    Greedy by start time into the first lane free by then: as many lanes as attempts ever
    ran at once on that peer, which is its slots in use (a 2-slot peer's bars drawn in one
    row covered each other)."""
    order = sorted(range(len(attempts)), key=lambda i: (attempts[i]["start_s"], i))
    free_at: list[float] = []
    out = [0] * len(attempts)
    for i in order:
        a = attempts[i]
        lane = next((k for k, t in enumerate(free_at) if t <= a["start_s"]), len(free_at))
        if lane == len(free_at):
            free_at.append(a["end_s"])
        else:
            free_at[lane] = a["end_s"]
        out[i] = lane
    return out


def _timeline(report: dict[str, Any]) -> str:
    attempts = report.get("attempts", [])
    peers: list[str] = []
    for a in attempts:
        if a["peer"] not in peers:
            peers.append(a["peer"])
    span = max([report.get("wall_s", 0.0), *(a["end_s"] for a in attempts)], default=0.0)
    span = max(span, 1e-3)
    per_peer = {p: [a for a in attempts if a["peer"] == p] for p in peers}
    lane_of = {p: lanes(per_peer[p]) for p in peers}
    rows = {p: 1 + max(lane_of[p], default=0) for p in peers}
    width = LABEL_W + PLOT_W + 10
    height = AXIS_H + ROW_H * max(1, sum(rows.values())) + 4

    def x(t: float) -> float:
        return LABEL_W + PLOT_W * max(0.0, t) / span

    # Inline SVG in HTML needs no xmlns: the page references no URL at all.
    out = [f'<svg id="timeline" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="chunk attempts over time, one row per peer">']
    for t in _ticks(span):
        out.append(f'<line class="grid" x1="{x(t):.1f}" y1="{AXIS_H - 6}" x2="{x(t):.1f}" '
                   f'y2="{height}"/><text class="tick" x="{x(t):.1f}" y="{AXIS_H - 10}">'
                   f'{t:g}s</text>')
    row = 0
    for peer in peers:
        top = AXIS_H + row * ROW_H
        out.append(f'<text class="peer" x="{LABEL_W - 8}" y="{top + ROW_H / 2 + 4:.1f}">'
                   f'{_esc(peer)}</text>')
        for a, lane in zip(per_peer[peer], lane_of[peer], strict=True):
            y = top + lane * ROW_H
            x0, x1 = x(a["start_s"]), x(a["end_s"])
            colour = OUTCOME_COLOURS.get(a["outcome"], "#444444")
            why = f" ({a['reason']})" if a.get("reason") else ""
            tip = (f"chunk {a['chunk']} on {peer}: {a['outcome']}{why}, "
                   f"{a['start_s']:.2f}-{a['end_s']:.2f} s")
            out.append(
                f'<g class="bar" data-outcome="{_esc(a["outcome"])}" data-chunk="{a["chunk"]}" '
                f'data-lane="{lane}">'
                f'<rect x="{x0:.1f}" y="{y + (ROW_H - BAR_H) / 2:.1f}" '
                f'width="{max(1.5, x1 - x0):.1f}" height="{BAR_H}" rx="3" fill="{colour}">'
                f'<title>{_esc(tip)}</title></rect>'
                + (f'<text class="chunk" x="{(x0 + x1) / 2:.1f}" y="{y + ROW_H / 2 + 4:.1f}">'
                   f'{a["chunk"]}</text>' if x1 - x0 > 18 else "")
                + "</g>")
        row += rows[peer]
    out.append("</svg>")
    return "".join(out)


def _summary(summary: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(p['name'])}</td><td>{p['chunks']}</td><td>{p['frames']}</td>"
        f"<td>{p['busy_s']:.1f} s</td><td>{p['mean_fps']:.1f}</td>"
        f"<td>{100 * p['share']:.0f}%</td></tr>" for p in summary["peers"])
    sp = summary.get("speedup")
    kept = summary.get("kept") or {}
    notes = "".join(f"<p>{_esc(line)}</p>" for line in (
        ([f"resumed: {kept['chunks']} of {kept['of']} chunks kept"] if kept.get("chunks")
         else [])
        + [f"left out: {x['reason']}" for x in summary.get("left_out", [])]
        + [f"unreachable: {x['peer']} ({x['reason']})" for x in summary.get("unreachable", [])]))
    return (
        '<table id="summary"><thead><tr><th>peer</th><th>chunks</th><th>frames</th>'
        f"<th>busy</th><th>mean fps</th><th>share</th></tr></thead><tbody>{rows}</tbody>"
        "</table>"
        f'<p class="totals">wall time {summary["wall_s"]:.1f} s &middot; '
        + (f"speedup over this device alone {sp:.1f}x &middot; " if sp else "")
        + f'retries {summary["retries"]} &middot; duplicates {summary["duplicates"]}</p>'
        + notes)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px} .sub{color:#555;margin:0 0 16px}
svg .grid{stroke:#e3e3e3} svg .tick{font-size:11px;fill:#666;text-anchor:middle}
svg .peer{font-size:12px;text-anchor:end;fill:#222}
svg .chunk{font-size:10px;fill:#fff;text-anchor:middle;pointer-events:none}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;
vertical-align:-1px}
table{border-collapse:collapse;margin-top:16px} td,th{padding:4px 12px;text-align:right}
td:first-child,th:first-child{text-align:left} thead th{border-bottom:1px solid #999}
tbody tr:nth-child(odd){background:#f4f4f4}
"""

# Counts the bars the browser actually laid out (non-zero boxes), so a headless-browser
# test can tell a rendered timeline from markup that merely exists.
_JS = """
document.addEventListener('DOMContentLoaded', function () {
  var n = 0;
  document.querySelectorAll('#timeline .bar rect').forEach(function (r) {
    var b = r.getBBox(); if (b.width > 0 && b.height > 0) n++;
  });
  document.body.setAttribute('data-bars-rendered', String(n));
});
"""


def build_html(report: dict[str, Any], summary: dict[str, Any]) -> str:
    """The whole page as one string."""
    legend = "".join(f'<span><i style="background:{c}"></i>{_esc(k)}</span>'
                     for k, c in OUTCOME_COLOURS.items())
    title = f"swarm: {report.get('input', '?')} -> {report.get('output', '?')}"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f'<p class="sub">profile {_esc(report.get("profile", "?"))} &middot; '
        f'{report.get("frames", 0)} frames at {report.get("width", 0)}x'
        f'{report.get("height", 0)} &middot; {len(report.get("chunks", []))} chunks, '
        f'{len(report.get("attempts", []))} attempts &middot; job {_esc(report.get("job_id", ""))}'
        "</p>"
        f'<div class="legend">{legend}</div>{_timeline(report)}{_summary(summary)}'
        f"<script>{_JS}</script></body></html>\n")
