// The two chart kinds a description may ask for: a histogram of values and a curve of points (SVG).
import { svg } from "./dom.js";
import { fixed, isNum, show } from "./format.js";

const W = 380, H = 170;
const list = (x) => (Array.isArray(x) ? x : []);

/** Linear scale from [d0, d1] to [r0, r1]. */
function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (x) => r0 + ((x - d0) / span) * (r1 - r0);
}

/** About n round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart). */
function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((m) => m >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

/** x and y axes with tick labels, as SVG elements. */
function axes(M, x, y, xticks, yticks, xfmt, yfmt, xlabel, ylabel) {
  const out = [
    svg("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis" }),
    svg("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: "axis" }),
  ];
  for (const t of xticks) out.push(svg("text", { x: x(t), y: H - M.b + 22, "text-anchor": "middle", class: "tick", text: xfmt(t) }));
  for (const t of yticks) out.push(svg("text", { x: M.l - 4, y: y(t) + 3, "text-anchor": "end", class: "tick", text: yfmt(t) }));
  out.push(svg("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label", text: xlabel ?? "" }));
  out.push(svg("text", { x: 10, y: M.t + 6, class: "axis-label", text: ylabel ?? "", transform: `rotate(-90 10 ${M.t + 6})`, "text-anchor": "end" }));
  return out;
}

/** Fractions (pp, pct) get their ticks on the percent scale they are read in. */
function tickScale(spec) {
  return spec.format === "pp" || spec.format === "pct" ? 100 : 1;
}

/** {values, marks: [{value, tip}], format..., bins, noun, x_label, y_label, empty} as a histogram. */
export function histogram(spec) {
  const M = { l: 34, r: 10, t: 10, b: 40 };
  const values = list(spec.values).filter(isNum);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `histogram of ${spec.x_label ?? "values"}` });
  if (!values.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", text: spec.empty ?? "no value" }));
    return root;
  }
  const lo = Math.min(0, ...values), hi = Math.max(0, ...values);
  const bins = Number.isInteger(spec.bins) && spec.bins > 0 ? spec.bins : 24, width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1;
  const x = scale(lo, hi, M.l, W - M.r), y = scale(0, Math.max(...counts), H - M.b, M.t);
  const noun = spec.noun ?? "value";
  counts.forEach((c, i) => {
    if (!c) return;
    const x0 = x(lo + i * width), x1 = x(lo + (i + 1) * width);
    root.append(svg("rect", { x: x0 + 0.5, y: y(c), width: Math.max(1, x1 - x0 - 1), height: H - M.b - y(c), class: "bar" },
      svg("title", { text: `${c} ${noun}${c === 1 ? "" : "s"} in [${show(lo + i * width, spec)}, ${show(lo + (i + 1) * width, spec)})` })));
  });
  for (const mark of list(spec.marks)) { // marked values (e.g. the top units) under the axis
    if (!mark || !isNum(mark.value)) continue;
    const px = x(mark.value);
    root.append(svg("path", { d: `M${px},${H - M.b + 3} l-4,7 h8 z`, class: "mark" }, svg("title", { text: mark.tip ?? show(mark.value, spec) })));
  }
  const s = tickScale(spec);
  const ticks = niceTicks(s * lo, s * hi, 5).map((t) => t / s);
  const digits = Math.max(0, -Math.floor(Math.log10((ticks[1] - ticks[0]) * s || 1)));
  const signed = spec.format === "pp" ? spec.signed ?? true : Boolean(spec.signed);
  root.append(...axes(M, x, y, ticks, [0, Math.max(...counts)],
    (v) => fixed(s * v, digits, signed), (v) => String(v), spec.x_label, spec.y_label));
  root.append(svg("line", { x1: x(0), x2: x(0), y1: M.t, y2: H - M.b, class: "zero" }));
  return root;
}

/** {points: [[x, y]], tips, format... (of y), y_range, x_label, y_label} as a line with dots. */
export function curve(spec) {
  const M = { l: 40, r: 10, t: 10, b: 40 };
  const tips = list(spec.tips);
  const points = list(spec.points).map((p, i) => [list(p)[0], list(p)[1], tips[i]]).filter(([a, b]) => isNum(a) && isNum(b));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": spec.y_label ?? "curve" });
  if (!points.length) return root;
  const range = list(spec.y_range).filter(isNum);
  const kmax = Math.max(...points.map((p) => p[0]), 1);
  const ymin = Math.min(...range, ...points.map((p) => p[1])), ymax = Math.max(...range, ...points.map((p) => p[1]));
  const x = scale(0, kmax, M.l, W - M.r), y = scale(ymin, ymax, H - M.b, M.t);
  root.append(...axes(M, x, y, points.map((p) => p[0]), niceTicks(ymin, ymax, 4),
    (v) => String(v), (v) => show(v, spec), spec.x_label, spec.y_label));
  root.append(svg("polyline", { points: points.map(([a, b]) => `${x(a)},${y(b)}`).join(" "), class: "line" }));
  for (const [a, b, tip] of points) {
    root.append(svg("circle", { cx: x(a), cy: y(b), r: 3, class: "dot" }, svg("title", { text: tip ?? `${a}: ${show(b, spec)}` })));
  }
  return root;
}
