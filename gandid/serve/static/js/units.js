// Units: the table of one analysed layer's units, with the columns the analyses describe.
import { $, clear, el } from "./dom.js";
import { layerNotes, unitColumns, unitCount, unitFlags } from "./described.js";
import { show } from "./format.js";
import { state } from "./state.js";

const UNIT = { key: "unit", title: "unit", num: true, sort: "asc" };

export function setupUnits() {
  const select = $("units-layer");
  for (const name of state.run.analysed_layers || []) select.append(el("option", { value: name, text: name }));
  select.addEventListener("change", () => {
    location.hash = `#units/${encodeURIComponent(select.value)}`;
  });
  $("units-filter").addEventListener("input", renderUnitsBody);
  $("units-only").addEventListener("change", renderUnitsBody);
}

function columns() {
  return [UNIT, ...unitColumns(state.units.layer)];
}

/** One row per unit of the layer: which flags it has. */
function unitRows(layer) {
  const flags = unitFlags(layer);
  const rows = [];
  for (let u = 0; u < unitCount(layer); u++) {
    const mine = flags.filter((f) => f.units.has(u));
    rows.push({ unit: u, flagged: mine.length > 0, highlight: mine.some((f) => f.highlight) });
  }
  return rows;
}

export function showUnitsList(layer) {
  const layers = state.run.analysed_layers || [];
  if (!layers.length) {
    $("units-note").textContent = "This run analysed no layer.";
    return;
  }
  if (!layers.includes(layer)) layer = state.units.layer && layers.includes(state.units.layer) ? state.units.layer : layers[0];
  $("unit-page").hidden = true;
  $("units-list").hidden = false;
  state.unitPageToken++;
  if (state.units.layer === layer && state.units.rows.length) return; // keep sort, filter and scroll
  state.units.layer = layer;
  $("units-layer").value = layer;
  state.units.rows = unitRows(layer);
  const labels = [...new Set(unitFlags(layer).map((f) => f.label).filter(Boolean))];
  $("units-only-label").textContent = ` ${labels.join(" / ")} only`;
  $("units-only").parentElement.hidden = !labels.length;
  if (!labels.length) $("units-only").checked = false;
  $("units-note").textContent = layerNotes(layer).join(" ");
  renderUnitsHead();
  renderUnitsBody();
}

function renderUnitsHead() {
  const row = el("tr");
  for (const col of columns()) {
    const sorted = state.units.sortKey === col.key;
    const th = el("th", {
      scope: "col", title: col.tip || null, class: col.num ? "num" : null,
      "aria-sort": sorted ? (state.units.sortDir > 0 ? "ascending" : "descending") : null,
    }, el("button", { type: "button", text: col.title + (sorted ? (state.units.sortDir > 0 ? " ▲" : " ▼") : "") }));
    th.addEventListener("click", () => sortUnits(col));
    row.append(th);
  }
  clear($("units-table").tHead).append(row);
}

function sortUnits(col) {
  if (state.units.sortKey === col.key) state.units.sortDir = -state.units.sortDir;
  else {
    state.units.sortKey = col.key;
    state.units.sortDir = col.sort === "asc" ? 1 : -1; // largest effects first unless the column says otherwise
  }
  renderUnitsHead();
  renderUnitsBody();
}

/** Compare two cell values; missing values go last whatever the direction. */
function compareCells(a, b, dir) {
  const missingA = a === null || a === undefined, missingB = b === null || b === undefined;
  if (missingA || missingB) return missingA === missingB ? 0 : missingA ? 1 : -1;
  if (typeof a === "string" || typeof b === "string") return dir * String(a).localeCompare(String(b));
  return dir * (Number(a) - Number(b));
}

const cellValue = (col, unit) => (col === UNIT ? unit : col.values[unit] ?? null);

function filteredUnitRows() {
  const text = $("units-filter").value.trim().toLowerCase();
  const only = $("units-only").checked;
  const cols = columns();
  const textCols = cols.filter((c) => c.format === "text"); // the filter reads the labels the analyses give
  const col = cols.find((c) => c.key === state.units.sortKey) || cols[0];
  return state.units.rows
    .filter((r) => !text || textCols.some((c) => String(c.values[r.unit] ?? "").toLowerCase().includes(text)))
    .filter((r) => !only || r.flagged)
    .sort((a, b) => compareCells(cellValue(col, a.unit), cellValue(col, b.unit), state.units.sortDir) || a.unit - b.unit);
}

function renderUnitsBody() {
  const layer = state.units.layer;
  const cols = columns();
  const rows = filteredUnitRows();
  const body = clear($("units-table").tBodies[0]);
  for (const r of rows) {
    const href = `#units/${encodeURIComponent(layer)}/${r.unit}`;
    const tr = el("tr", { class: r.highlight ? "flagged" : null });
    for (const col of cols) tr.append(unitCell(r.unit, col, href));
    tr.addEventListener("click", (event) => {
      if (!event.target.closest("a")) location.hash = href;
    });
    body.append(tr);
  }
  $("units-count").textContent = `${rows.length} of ${state.units.rows.length} units`;
}

function unitCell(unit, col, href) {
  if (col === UNIT) return el("td", { class: "num" }, el("a", { href, text: String(unit) }));
  const value = cellValue(col, unit);
  const td = el("td", { class: col.num ? "num" : null, text: show(value, col), title: col.tips[unit] ?? null });
  if (value === null) td.classList.add("muted"); // not measured: the tip says what is known
  if (col.tag && col.tag.units.has(unit)) td.append(el("span", { class: "tag", text: col.tag.text, title: col.tag.tip ?? null }));
  return td;
}
