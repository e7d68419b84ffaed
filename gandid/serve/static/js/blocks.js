// Generic renderers of the descriptions' pieces: cells, tables, fact lists and fact lines (docs/serve.md).
// A piece that holds "values" (one per unit) is shown at the unit it is given.
import { classHref, el, swatchFor } from "./dom.js";
import { isNum, show } from "./format.js";

const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);

/** A piece's value: its "value", or its "values" at `unit`; undefined when it has neither. */
export function valueOf(piece, unit) {
  if ("values" in piece) return Array.isArray(piece.values) ? piece.values[unit] ?? null : null;
  return "value" in piece ? piece.value : undefined;
}

/** A small tag after a cell's text ({text, tip}). */
export function tag(spec) {
  return isObject(spec) ? el("span", { class: "tag", text: spec.text, title: spec.tip ?? null }) : null;
}

/** A table cell: a class link, a segmentation label with its colour, or a value; then a tag. */
export function cell(c, unit, num) {
  if (!isObject(c)) return el("td", { class: num ? "num" : null, text: show(c) });
  const value = valueOf(c, unit);
  const classes = [num ? "num" : "", c.muted ? "muted" : "", c.strong ? "strong" : ""];
  if (c.sign && isNum(value)) classes.push(value > 0 ? "pos" : value < 0 ? "neg" : "");
  const td = el("td", { class: classes.filter(Boolean).join(" ") || null, title: c.tip ?? null });
  if (typeof c.class === "string") td.append(el("a", { href: classHref(c.class), text: c.class }));
  else if (typeof c.label === "string") td.append(swatchFor(c.label), c.label);
  else if (value !== undefined) td.append(show(value, c));
  const t = tag(c.tag);
  if (t) td.append(t);
  return td;
}

/** A table from {columns: [{label, num}], rows: [{cells, highlight}]}; numeric columns align right. */
export function table(spec, unit, cls = "data") {
  const columns = Array.isArray(spec.columns) ? spec.columns : [];
  const numeric = columns.map((c) => isObject(c) && Boolean(c.num));
  const head = el("tr", {}, columns.map((c, i) => el("th", { class: numeric[i] ? "num" : null, text: isObject(c) ? c.label : c })));
  const rows = (Array.isArray(spec.rows) ? spec.rows : []).filter(isObject).map((row) => el("tr", {
    class: row.highlight ? "highlight" : null,
  }, (Array.isArray(row.cells) ? row.cells : []).map((c, i) => cell(c, unit, numeric[i]))));
  return el("div", { class: "table-wrap" }, el("table", { class: cls }, el("thead", {}, head), el("tbody", {}, rows)));
}

/** A definition list from rows [{label, value | values, format...}]. */
export function factList(rows, unit, cls = "facts") {
  const items = (Array.isArray(rows) ? rows : []).filter(isObject)
    .map((r) => [el("dt", { text: r.label }), el("dd", { text: show(valueOf(r, unit) ?? null, r) })]);
  return el("dl", { class: cls }, items);
}

/** One line of facts [{text, value, interval, format...}]: "text value [lo, hi] · ...". */
export function factLine(facts) {
  return (Array.isArray(facts) ? facts : []).filter(isObject).map((f) => [
    f.text, "value" in f ? show(f.value, f) : null, "interval" in f ? show(f.interval, f) : null,
  ].filter((s) => s !== null && s !== undefined && s !== "").join(" ")).filter(Boolean).join(" · ");
}
