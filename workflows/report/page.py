"""The report as one self-contained HTML file: images and audio embedded as data URIs, no
network, no external scripts.

Layout: the run summary (set-level metrics, metrics that could not run and why, time per
clip), then one table row per video, sortable by any column (click a header; empty values
stay last; `index.html#sort=av_align` opens it sorted), then per video its waveforms and mel spectrograms (generated above reference,
same time axis, visual events / reference onsets in red, detected onsets in green) with audio
players. Sorting the table also reorders the per-video sections, so the worst clips by any
metric are one click away.
"""

from __future__ import annotations

import base64
import html
import math

from dub.workflows.report.config import PER_CLIP_METRICS, ClipMedia

__all__ = ["render_page"]

_FIXED_COLUMNS = ("video_id", "status", "reference_kind", "onset_reference", "duration_s")

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#eee;cursor:pointer;user-select:none}
td.text,th.text{text-align:left}
th.asc::after{content:" \\25B2"} th.desc::after{content:" \\25BC"}
section.clip{border-top:2px solid #ddd;padding:0.6em 0}
.pair{display:grid;grid-template-columns:max-content max-content;gap:6px 16px;align-items:center}
.pair img{display:block;border:1px solid #ccc}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.err{color:#b00}
"""

_JS = """
function cellValue(row, col) {
  const v = row.cells[col].dataset.value;
  if (v === undefined || v === '') return null;
  const n = Number(v);
  return Number.isNaN(n) ? v : n;
}
function sortClips(col) {
  const table = document.getElementById('clips');
  const th = table.tHead.rows[0].cells[col];
  const asc = !th.classList.contains('asc');
  for (const h of table.tHead.rows[0].cells) h.classList.remove('asc', 'desc');
  th.classList.add(asc ? 'asc' : 'desc');
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = cellValue(a, col), y = cellValue(b, col);
    if (x === null && y === null) return 0;
    if (x === null) return 1;
    if (y === null) return -1;
    const c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return asc ? c : -c;
  });
  const details = document.getElementById('details');
  for (const r of rows) {
    body.appendChild(r);
    const sec = document.getElementById('clip-' + r.dataset.id);
    if (sec) details.appendChild(sec);
  }
}
// index.html#sort=<column> (or #sort=-<column> for descending) opens the page already sorted
window.addEventListener('DOMContentLoaded', () => {
  const m = /^#sort=(-?)(.+)$/.exec(decodeURIComponent(location.hash));
  if (!m) return;
  const heads = Array.from(document.getElementById('clips').tHead.rows[0].cells);
  const col = heads.findIndex(h => h.textContent === m[2]);
  if (col < 0) return;
  sortClips(col);
  if (m[1] === '-') sortClips(col);
});
"""


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.4g}"
    return str(value)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes | None, alt: str, css: str) -> str:
    if data is None:
        return "<span>no reference audio</span>"
    return f'<img class="{css}" alt="{html.escape(alt)}" src="{_data_uri(data, "image/png")}">'


def _audio(item: tuple[bytes, str] | None) -> str:
    if item is None:
        return ""
    data, mime = item
    return f'<audio controls preload="none" src="{_data_uri(data, mime)}"></audio>'


def _summary_tables(summary: dict) -> str:
    lower = set(summary.get("lower_is_better", []))
    notes = summary.get("notes", {})
    metrics = summary.get("metrics", {})
    parts = [
        '<table id="summary"><thead><tr><th class="text">metric</th><th>value</th><th>clips</th>'
        '<th class="text">note</th></tr></thead><tbody>'
    ]
    for key, value in metrics.items():
        if key.endswith("_n"):
            continue  # shown as the clip count of its mean
        base = key.removesuffix("_mean")
        direction = "lower is better" if base in lower or key in lower else ""
        note = "; ".join(x for x in (notes.get(key, ""), direction) if x)
        count = _fmt(metrics.get(f"{base}_n")) if key.endswith("_mean") else ""
        parts.append(
            f'<tr><td class="text">{html.escape(key)}</td><td>{_fmt(value)}</td><td>{count}</td>'
            f'<td class="text">{html.escape(note)}</td></tr>'
        )
    parts.append("</tbody></table>")
    unavailable = summary.get("unavailable", {})
    if unavailable:
        parts.append('<h3>Not computed</h3><table id="unavailable"><tbody>')
        for keys, reason in grouped_unavailable(unavailable):
            parts.append(
                f'<tr><td class="text">{html.escape(", ".join(keys))}</td>'
                f'<td class="text">{html.escape(reason)}</td></tr>'
            )
        parts.append("</tbody></table>")
    timings = summary.get("timings_ms_per_clip", {})
    if timings:
        parts.append('<h3>Time per clip (ms)</h3><table id="timings"><tbody>')
        for key, ms in timings.items():
            parts.append(f'<tr><td class="text">{html.escape(key)}</td><td>{ms:.1f}</td></tr>')
        parts.append("</tbody></table>")
    return "".join(parts)


def _clips_table(records: list[dict], columns: list[str]) -> str:
    head = "".join(
        f'<th class="{"text" if c in ("video_id", "status", "reference_kind", "onset_reference", "error") else ""}" '
        f'onclick="sortClips({i})">{html.escape(c)}</th>'
        for i, c in enumerate(columns)
    )
    rows = []
    for r in records:
        vid = html.escape(str(r["video_id"]))
        cells = []
        for c in columns:
            value = r.get(c)
            shown = _fmt(value)
            if c == "video_id":
                cells.append(f'<td class="text" data-value="{vid}"><a href="#clip-{vid}">{vid}</a></td>')
            elif isinstance(value, (int, float)) and value is not None:
                cells.append(f'<td data-value="{shown and repr(float(value))}">{shown}</td>')
            else:
                css = "text err" if c == "error" and value else "text"
                cells.append(f'<td class="{css}" data-value="{html.escape(shown)}">{html.escape(shown)}</td>')
        rows.append(f'<tr data-id="{vid}">{"".join(cells)}</tr>')
    return f'<table id="clips"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _clip_section(record: dict, media: ClipMedia | None, columns: list[str]) -> str:
    vid = html.escape(str(record["video_id"]))
    metrics = ", ".join(
        f"{c} = {_fmt(record.get(c))}" for c in columns if c in PER_CLIP_METRICS and record.get(c) is not None
    )
    error = f'<p class="err">{html.escape(record["error"])}</p>' if record.get("error") else ""
    body = ""
    if media is not None:
        body = (
            '<div class="pair">'
            f"<b>generated</b><span></span>"
            f"{_img(media.wave_generated, f'waveform generated {vid}', 'wave')}"
            f"{_img(media.spec_generated, f'mel spectrogram generated {vid}', 'spectrogram')}"
            f"{_audio(media.audio_generated)}<span></span>"
            f"<b>reference</b><span></span>"
            f"{_img(media.wave_reference, f'waveform reference {vid}', 'wave')}"
            f"{_img(media.spec_reference, f'mel spectrogram reference {vid}', 'spectrogram')}"
            f"{_audio(media.audio_reference)}<span></span>"
            "</div>"
        )
    return (
        f'<section class="clip" id="clip-{vid}"><h3>{vid} <small>({html.escape(record["status"])})</small></h3>'
        f"<p>{html.escape(metrics)}</p>{error}{body}</section>"
    )


def render_page(summary: dict, records: list[dict], media: dict[str, ClipMedia]) -> str:
    """The whole page as a string."""
    present = [c for c in PER_CLIP_METRICS if any(r.get(c) is not None for r in records)]
    columns = list(_FIXED_COLUMNS) + present + ["error"]
    counts = (
        f"{summary.get('n_rows', len(records))} rows: {summary.get('n_scored', 0)} scored, "
        f"{summary.get('n_skipped', 0)} skipped, {summary.get('n_failed', 0)} failed; "
        f"{summary.get('n_with_reference', 0)} with reference audio, "
        f"{summary.get('n_with_events', 0)} with visual events"
    )
    if summary.get("sample"):
        sample = summary["sample"]
        counts += (
            f"; a sample of {sample['clips']} of the run's {sample['of_generated']} generated clips "
            f"(--sample-seed {sample['seed']})"
        )
    legend = (
        '<p class="legend">Pictures: waveform, then mel spectrogram (0-8 kHz, 80 dB range), '
        'on one time axis per clip.<span style="background:#dc2828"></span>visual events '
        '(or reference onsets)<span style="background:#1ea03c"></span>onsets detected in that audio</p>'
    )
    sections = "".join(_clip_section(r, media.get(r["video_id"]), columns) for r in records)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>dub report</title>'
        f"<style>{_CSS}</style></head><body>"
        f"<h1>dub report</h1><p>{html.escape(str(summary.get('run_dir', '')))}: {html.escape(counts)}</p>"
        f"<h2>Summary</h2>{_summary_tables(summary)}"
        f"<h2>Clips</h2><p>Click a column header to sort.</p>{_clips_table(records, columns)}"
        f'<h2>Per clip</h2>{legend}<div id="details">{sections}</div>'
        f"<script>{_JS}</script></body></html>"
    )


def grouped_unavailable(unavailable: dict[str, str]) -> list[tuple[list[str], str]]:
    """Metrics that share one reason (e.g. FAD, KL and IS all need the CNN14 file), together."""
    groups: dict[str, list[str]] = {}
    for key, reason in unavailable.items():
        groups.setdefault(reason, []).append(key)
    return [(keys, reason) for reason, keys in groups.items()]
