"""The quantization report as one self-contained HTML page (no network: data and drawing code inline).

Sections: summary (int8 share, agreement with fp32, size and latency of the fp32 and int8
artifacts), per-layer SQNR as a bar chart, the model graph with each ONNX node coloured by
precision (int8, kept in fp32 by --skip or the accuracy search, float-only op), weight and
activation histograms of the worst layers by SQNR, and the fallback decisions. The charts are
SVG drawn by the page's own script from the embedded JSON, so a browser that shows them ran it.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from .frontend import ImportedModel
from .quantize import Quantized
from .report import QuantizationReport

WORST_LAYERS = 4

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
.legend span { display: inline-block; margin-right: 16px; } .swatch { width: 12px; height: 12px;
display: inline-block; vertical-align: middle; margin-right: 4px; }
svg text { font: 10px system-ui, sans-serif; } svg.histogram { margin: 0 40px 0 4px; } .scroll { overflow: auto; max-height: 900px; border: 1px solid #eee; }
"""

_SCRIPT = r"""
const NS = "http://www.w3.org/2000/svg";
const COLORS = {int8: "#2e8b57", fallback: "#e67e22", float: "#9aa5b1"};
function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function sqnrChart(layers, host) {
  const rows = layers.filter(l => l.sqnr_db !== undefined);
  const h = 16, left = 220, width = 560;
  const svg = el("svg", {width: left + width + 60, height: rows.length * h + 30, class: "chart"}, host);
  const finite = rows.map(l => l.sqnr_db === null ? 60 : l.sqnr_db);
  const top = Math.max(40, ...finite);
  rows.forEach((l, i) => {
    const v = Math.max(0, finite[i]);
    el("text", {x: left - 6, y: i * h + 12, "text-anchor": "end"}, svg, l.name.slice(0, 34));
    el("rect", {x: left, y: i * h + 2, width: width * v / top, height: h - 4, class: "bar",
                fill: v < 20 ? "#c0392b" : v < 30 ? "#e67e22" : "#2e8b57"}, svg);
    el("text", {x: left + width * v / top + 4, y: i * h + 12}, svg, l.sqnr_db === null ? "inf" : l.sqnr_db.toFixed(1));
  });
  el("text", {x: left, y: rows.length * h + 22}, svg, "SQNR (dB) of each int8 layer's output against fp32, held-out samples");
}
function graph(g, host) {
  const w = 150, h = 20, dx = 170, dy = 34;
  const cols = Math.max(1, ...g.nodes.map(n => n.col + 1)), rows = Math.max(1, ...g.nodes.map(n => n.row + 1));
  const svg = el("svg", {width: cols * dx + 20, height: rows * dy + 20, class: "graph"}, host);
  const pos = n => [10 + n.col * dx, 10 + n.row * dy];
  g.edges.forEach(([a, b]) => {
    const [x1, y1] = pos(g.nodes[a]), [x2, y2] = pos(g.nodes[b]);
    el("line", {x1: x1 + w / 2, y1: y1 + h, x2: x2 + w / 2, y2: y2, stroke: "#bbb"}, svg);
  });
  g.nodes.forEach(n => {
    const [x, y] = pos(n);
    const r = el("rect", {x, y, width: w, height: h, rx: 4, fill: COLORS[n.precision], class: "node"}, svg);
    el("title", {}, r, `${n.name} (${n.op}): ${n.precision}`);
    el("text", {x: x + 4, y: y + 14, fill: "white"}, svg, `${n.op} ${n.name}`.slice(0, 26));
  });
}
function histogram(title, hist, host, color) {
  const width = 240, height = 90;
  const svg = el("svg", {width, height: height + 34, class: "histogram"}, host);
  el("text", {x: 0, y: 10}, svg, title);
  const top = Math.max(1, ...hist.counts), bw = width / hist.counts.length;
  hist.counts.forEach((c, i) => el("rect", {x: i * bw, y: 14 + height * (1 - c / top), width: bw - 1,
                                            height: height * c / top, fill: color, class: "bar"}, svg));
  el("text", {x: 0, y: height + 30}, svg, hist.range[0].toPrecision(3));
  el("text", {x: width, y: height + 30, "text-anchor": "end"}, svg, hist.range[1].toPrecision(3));
}
sqnrChart(REPORT.layers, document.getElementById("sqnr"));
graph(REPORT.graph, document.getElementById("graph"));
const worst = document.getElementById("worst");
REPORT.worst.forEach(l => {
  const box = document.createElement("div");
  box.innerHTML = `<h3>${l.name} (${l.op}), SQNR ${l.sqnr_db === null ? "inf" : l.sqnr_db.toFixed(1)} dB</h3>`;
  worst.appendChild(box);
  if (l.weight_histogram) histogram("weights", l.weight_histogram, box, "#34495e");
  if (l.activation_histogram) histogram("output activations (fp32) over the int8 range", l.activation_histogram, box, "#2980b9");
});
"""


def _graph(imported: ImportedModel, q: Quantized) -> dict:
    """ONNX nodes placed in rows by depth (longest path from the inputs), coloured by precision."""
    nodes = list(imported.imported_graph.graph.node)
    int8 = set()
    if q.plan is not None:
        for op in q.plan.ops:
            for var in [op.var, *op.epilogue]:
                if var in q.node_of:
                    int8.add(q.node_of[var])
    fallback = {node for node, _ in (q.plan.skipped if q.plan is not None else [])}
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    depth, edges, used = [], [], {}
    for i, node in enumerate(nodes):
        sources = sorted({producer[t] for t in node.input if t in producer})
        edges += [(s, i) for s in sources]
        depth.append(1 + max((depth[s] for s in sources), default=-1))
    placed = []
    for i, node in enumerate(nodes):
        col = used.get(depth[i], 0)
        used[depth[i]] = col + 1
        precision = "int8" if node.name in int8 else "fallback" if node.name in fallback else "float"
        placed.append({"name": node.name, "op": node.op_type, "precision": precision, "row": depth[i], "col": col})
    return {"nodes": placed, "edges": edges}


def _finite(value):
    """`value` with every non-finite float as None (JSON has no infinity; an SQNR is infinite
    where the layer has no error at all)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _summary_rows(report: QuantizationReport, artifacts: dict | None) -> list[tuple[str, str]]:
    rows = [("int8 share of MACs", f"{report.int8_mac_fraction:.1%}"),
            ("int8 share of compute ops", f"{report.int8_op_fraction:.0%}")]
    metrics = report.model_metrics
    if "top1_agreement" in metrics:
        rows.append(("top-1 agreement with fp32", f"{metrics['top1_agreement']:.2%} on {report.samples} held-out samples"))
    if "cosine" in metrics:
        rows.append(("cosine to fp32 (first output)", f"{metrics['cosine']:.5f}"))
    for label, (size, latency) in (artifacts or {}).items():
        rows.append((f"{label} artifact", f"{size / 1e6:.2f} MB, {latency:.3f} ms median latency"))
    return rows


def html_report(report: QuantizationReport, q: Quantized, imported: ImportedModel, title: str,
                artifacts: dict | None = None) -> str:
    """The page. `artifacts` maps a label ("fp32", "int8") to (bytes, median latency in ms)."""
    layers = report.layers
    worst = sorted((layer for layer in layers if "sqnr_db" in layer and math.isfinite(layer["sqnr_db"])),
                   key=lambda layer: layer["sqnr_db"])[:WORST_LAYERS]
    data = {"layers": layers, "graph": _graph(imported, q), "worst": worst}
    payload = json.dumps(_finite(data), allow_nan=False).replace("</", "<\\/")
    summary = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                      for k, v in _summary_rows(report, artifacts))
    half = set(q.half_precision_layers)
    decisions = [(node, reason + (f"; runs on {q.config.fallback_precision.value} products" if node in half else ""))
                 for node, reason in (q.plan.skipped if q.plan is not None else [])]
    accuracy = q.accuracy
    search = ""
    if accuracy is not None:
        realized = f"{accuracy.realized_value:.4g}" if accuracy.realized_value is not None else "-"
        bound = f" with at least {accuracy.min_int8_macs:.0%} of MACs in int8" if accuracy.min_int8_macs else ""
        outcome = "met" if accuracy.met else "<strong>not met</strong>: the best set found is kept"
        search = (f"<p>Accuracy target {html.escape(accuracy.metric)} &ge; {accuracy.target:g}{bound} on "
                  f"{accuracy.samples} samples: {outcome}. All int8 {accuracy.int8_value:.4g}, fp32 "
                  f"{accuracy.fp32_value:.4g}, chosen {realized} with {len(accuracy.fallback)} ops in fp32 "
                  f"({accuracy.trials} trials).</p>")
        top = sorted(accuracy.sqnr_gain, key=lambda node: -accuracy.sqnr_gain[node])[:10]
        search += ("<table><tr><th>op (most sensitive first)</th><th>output SQNR gain, alone in fp32</th>"
                   f"<th>{html.escape(accuracy.metric)} gain</th></tr>") + "".join(
            f"<tr><td>{html.escape(node)}</td><td>{accuracy.sqnr_gain[node]:+.2f} dB</td>"
            f"<td>{accuracy.sensitivity[node]:+.4g}</td></tr>" for node in top) + "</table>"
    decision_rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{html.escape(r)}</td></tr>" for n, r in decisions) \
        or "<tr><td colspan=2>none: every quantizable op is int8</td></tr>"
    legend = "".join(f'<span><i class="swatch" style="background:{c}"></i>{label}</span>' for label, c in
                     (("int8", "#2e8b57"), ("kept in fp32", "#e67e22"), ("float-only op", "#9aa5b1")))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<h2>Summary</h2><table>{summary}</table>
<h2>Per-layer SQNR</h2><div id="sqnr"></div>
<h2>Graph by precision</h2><div class="legend">{legend}</div><div class="scroll" id="graph"></div>
<h2>Worst layers: weight and activation ranges</h2><div id="worst"></div>
<h2>Fallback decisions</h2>{search}<table><tr><th>node</th><th>why fp32</th></tr>{decision_rows}</table>
<script>const REPORT = {payload};
{_SCRIPT}</script>
</body></html>
"""


def write_html(page: str, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(page)
    tmp.replace(path)
