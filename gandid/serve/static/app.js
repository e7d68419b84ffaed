// gandid explorer: the browser side of `gandid serve` (docs/serve.md).
// Plain ES2020, no framework and no network access beyond this server. Every string that comes from
// JSON goes into the page through textContent / setAttribute (el(), svg()), never through innerHTML.
"use strict";

const ANALYSES = ["dissect", "ace", "did", "entangle"]; // the results the views know how to show
const VIEWS = ["units", "paint", "classes"];
const SVG_NS = "http://www.w3.org/2000/svg";
const MIN_CHANGE = 0.0005; // area changes smaller than this (0.05 pp) are left out of the tables
const RANDOM_SAMPLES = 100000; // "random" picks a sample index below this
// how entangle's report names each call (plugins/analyses/entangle.py CALLS)
const CALLS = {
  disentangled: "disentangled",
  type2_misablation: "type 2: mis-ablation",
  type1_deactivating: "type 1: deactivating",
  uncertain: "uncertain (an interval contains a threshold)",
};

const state = {
  run: null, // GET /api/run
  results: {}, // analysis name -> its JSON result, for the analyses the run has
  units: { layer: null, sortKey: "unit", sortDir: 1, rows: [] },
  unitPageToken: 0, // a unit page whose images arrive after the user moved on is dropped
  classesRendered: false,
  pendingSample: null, // a sample chosen on a unit page, taken by Paint when it opens
  paint: { mask: null, h: 0, w: 0, stroke: null, busy: false, sampleToken: 0, layer: null },
};

// ---------------------------------------------------------------- DOM helpers

const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes (never parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  appendAll(node, children);
  return node;
}

/** An SVG element, same conventions as el(). */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  appendAll(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.setAttribute("class", value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An <img> for an API image; only PNG data URLs are accepted, so a bad answer cannot point anywhere. */
function image(src, alt, cls = "pixelated") {
  const ok = typeof src === "string" && src.startsWith("data:image/png;base64,");
  return el("img", { class: cls, alt, src: ok ? src : null, title: alt });
}

function figure(src, caption, cls, role) {
  const img = image(src, caption, cls);
  if (role) img.dataset.role = role;
  return el("figure", {}, img, el("figcaption", { text: caption }));
}

function clear(node) {
  node.replaceChildren();
  return node;
}

// ---------------------------------------------------------------- formatting

function isNum(x) {
  return typeof x === "number" && Number.isFinite(x);
}

/** A number with fixed decimals, never "-0.00". */
function fixed(x, digits = 2, signed = false) {
  if (!isNum(x)) return "—";
  let s = x.toFixed(digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  if (signed && x > 0) s = "+" + s;
  return s;
}

/** A change in a fraction of image pixels, in percentage points: 0.0123 -> "+1.23 pp". */
function pp(x, digits = 2, signed = true) {
  return isNum(x) ? fixed(100 * x, digits, signed) + "\u00a0pp" : "—";
}

/** A fraction as a percentage: 0.423 -> "42.3%". */
function pct(x, digits = 1) {
  return isNum(x) ? fixed(100 * x, digits) + "%" : "—";
}

function interval(ci, fmt) {
  return Array.isArray(ci) && ci.length === 2 ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : "—";
}

/** A p or q value: three significant digits, small ones in exponent form. */
function pval(x) {
  if (!isNum(x)) return "—";
  return x < 0.001 ? x.toExponential(1) : x.toPrecision(2);
}

// ---------------------------------------------------------------- messages and the API

function showMessage(text, kind = "error") {
  const box = $("messages");
  const last = box.lastElementChild;
  if (last && last.firstElementChild.textContent === text) return; // the same message again: keep one
  const close = el("button", { type: "button", class: "close", "aria-label": "dismiss", text: "×" });
  const msg = el("div", { class: `message ${kind}` }, el("span", { text }), close);
  close.addEventListener("click", () => msg.remove());
  box.append(msg);
  while (box.children.length > 4) box.firstElementChild.remove(); // keep the latest few
}

function clearMessages() {
  clear($("messages"));
}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** GET path, or POST body as JSON; the JSON answer, or an ApiError with the server's message. */
async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(`cannot reach the server (${err.message})`, 0);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: reported below with the status
  }
  if (!response.ok) {
    let message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`;
    if (response.status === 503) {
      const retry = response.headers.get("Retry-After");
      if (!/^busy\b/i.test(message)) message = `the model is busy: ${message}`;
      if (retry) message += ` (try again in ${retry} s)`;
    }
    throw new ApiError(message, response.status);
  }
  if (data === null) throw new ApiError(`${path}: the answer is not JSON`, response.status);
  return data;
}

// ---------------------------------------------------------------- start

async function init() {
  try {
    state.run = await api("/api/run");
  } catch (err) {
    $("run-name").textContent = "no run";
    showMessage(`Cannot load the run: ${err.message}`);
    return;
  }
  renderHeader();
  renderLegend();
  await loadResults();
  setupUnits();
  setupPaint();
  window.addEventListener("hashchange", route);
  route();
}

async function loadResults() {
  const analyses = state.run.analyses || {};
  const names = ANALYSES.filter((name) => analyses[name] && analyses[name].result);
  await Promise.all(names.map(async (name) => {
    try {
      state.results[name] = await api(`/api/results/${encodeURIComponent(name)}`);
    } catch (err) {
      showMessage(`Cannot load ${name}'s result: ${err.message}`);
    }
  }));
}

function renderHeader() {
  const run = state.run;
  $("run-name").textContent = run.name;
  const status = $("run-status");
  status.textContent = run.status;
  status.className = `badge status-${String(run.status).replace(/[^a-z]/g, "")}`;
  document.title = `${run.name} · gandid explorer`;
  const meta = [
    ["generator", run.generator], ["segmenter", run.segmenter], ["seed", run.seed],
    ["samples", run.samples], ["resolution", Array.isArray(run.resolution) ? run.resolution.join("×") : run.resolution],
    ["device", run.device],
  ];
  clear($("run-meta")).append(...meta.filter(([, v]) => v !== undefined && v !== null)
    .map(([k, v]) => el("span", {}, el("span", { class: "muted", text: `${k} ` }), String(v))));
}

function renderLegend() {
  const list = clear($("legend-list"));
  (state.run.labels || []).forEach((label, i) => {
    const rgb = (state.run.colours || [])[i] || [0, 0, 0];
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = `rgb(${rgb.map(Number).join(",")})`;
    list.append(el("li", {}, swatch, label));
  });
}

// ---------------------------------------------------------------- routing

/** #units, #units/LAYER, #units/LAYER/UNIT, #paint, #paint/LAYER/U1,U2, #classes, #classes/CLASS */
function route() {
  const parts = location.hash.replace(/^#/, "").split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const view = VIEWS.includes(parts[0]) ? parts[0] : "units";
  for (const name of VIEWS) $(`view-${name}`).hidden = name !== view;
  for (const tab of document.querySelectorAll("#tabs a")) {
    if (tab.dataset.view === view) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (view === "units") {
    if (parts.length >= 3 && parts[2] !== "") showUnitPage(parts[1], parts[2]);
    else showUnitsList(parts[1]);
  } else if (view === "paint") {
    if (parts.length >= 3) presetPaint(parts[1], parts[2]);
    ensureSample();
  } else {
    renderClasses();
    const target = parts[1] && document.getElementById(`class-${parts[1]}`);
    if (target) target.scrollIntoView({ block: "start" });
  }
}

// ---------------------------------------------------------------- run data

function layerInfo(name) {
  return (state.run.layers || []).find((l) => l.name === name) || null;
}

function dissectUnits(layer) {
  const d = state.results.dissect;
  return (d && d.layers && d.layers[layer] && d.layers[layer].units) || null;
}

/** ace.json when it measured this layer (ace analyses one layer). */
function aceFor(layer) {
  const ace = state.results.ace;
  return ace && ace.layer === layer && ace.classes ? ace : null;
}

function aceClasses(ace) {
  return ace ? Object.keys(ace.classes) : [];
}

/** How many top units ace ranked as "the top k" (its top_k option; the last curve k). */
function aceTopK(entry) {
  const stable = entry.topk_stability ? Object.keys(entry.topk_stability).length : 0;
  const curve = Array.isArray(entry.curve_k) && entry.curve_k.length ? Math.max(...entry.curve_k) : 0;
  return stable || curve || 20;
}

/** The screen's estimate of a unit's ACE on the exact scale (ace's best_unit_ace), or null. */
function calibratedEstimate(entry, unit) {
  const est = entry.unit_ace_estimate;
  if (!Array.isArray(est) || !isNum(est[unit])) return null;
  const fit = (entry.screen && entry.screen.fit) || { intercept: 0, slope: 0 };
  return fit.intercept + fit.slope * est[unit];
}

/** unit -> [{cls, removed_fraction}] for the units one ablation of which removes a class. */
function decisiveByUnit(ace) {
  const map = new Map();
  for (const cls of aceClasses(ace)) {
    for (const d of ace.classes[cls].decisive_units || []) {
      if (!map.has(d.unit)) map.set(d.unit, []);
      map.get(d.unit).push({ cls, removed: d.removed_fraction });
    }
  }
  return map;
}

function unitCount(layer) {
  const units = dissectUnits(layer);
  if (units) return units.length;
  const ace = aceFor(layer);
  if (ace && isNum(ace.units)) return ace.units;
  const info = layerInfo(layer);
  return info ? info.channels : 0;
}

/** One row per unit of the layer, from dissect and ace. */
function unitRows(layer) {
  const units = dissectUnits(layer) || [];
  const ace = aceFor(layer);
  const decisive = ace ? decisiveByUnit(ace) : new Map();
  const rows = [];
  for (let u = 0; u < unitCount(layer); u++) {
    const d = units.find((x) => x.unit === u) || {};
    const row = {
      unit: u, label: d.label ?? null, iou: d.iou ?? null, iou_lift: d.iou_lift ?? null,
      interpretable: Boolean(d.interpretable), decisive: decisive.get(u) || [], ace: {}, estimate: {},
    };
    for (const cls of aceClasses(ace)) {
      const entry = ace.classes[cls];
      row.ace[cls] = isNum(entry.unit_ace[u]) ? entry.unit_ace[u] : null;
      row.estimate[cls] = calibratedEstimate(entry, u);
    }
    rows.push(row);
  }
  return rows;
}

// ---------------------------------------------------------------- Units view

function setupUnits() {
  const select = $("units-layer");
  for (const name of state.run.analysed_layers || []) select.append(el("option", { value: name, text: name }));
  select.addEventListener("change", () => {
    location.hash = `#units/${encodeURIComponent(select.value)}`;
  });
  $("units-filter").addEventListener("input", renderUnitsBody);
  $("units-only").addEventListener("change", renderUnitsBody);
}

function unitColumns(layer) {
  const cols = [
    { key: "unit", title: "unit", num: true, get: (r) => r.unit },
    { key: "label", title: "label", get: (r) => r.label },
    { key: "iou", title: "IoU", num: true, get: (r) => r.iou, fmt: (r) => fixed(r.iou, 3) },
    { key: "iou_lift", title: "lift", num: true, tip: "IoU over the IoU of chance", get: (r) => r.iou_lift,
      fmt: (r) => (isNum(r.iou_lift) ? `×${fixed(r.iou_lift, 1)}` : "—") },
  ];
  for (const cls of aceClasses(aceFor(layer))) {
    cols.push({
      key: `ace:${cls}`, title: `ACE ${cls}`, num: true, ace: cls,
      tip: `average causal effect on ${cls}: inserted minus ablated area, percentage points of the image`,
      get: (r) => r.ace[cls], fmt: (r) => pp(r.ace[cls]),
    });
  }
  if (aceFor(layer)) {
    cols.push({ key: "decisive", title: "decisive", tip: "one ablation of the unit removes a class",
      get: (r) => r.decisive.length, fmt: (r) => (r.decisive.length ? "✓" : "") });
  }
  return cols;
}

function showUnitsList(layer) {
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
  const notes = [];
  if (!dissectUnits(layer)) notes.push("No dissection of this layer.");
  if (!aceFor(layer)) notes.push(state.results.ace ? `ACE was measured at ${state.results.ace.layer}.` : "This run has no ACE.");
  else notes.push("ACE: inserted minus ablated area of the class; — where the screen did not measure the unit exactly (hover for its estimate).");
  $("units-note").textContent = notes.join(" ");
  renderUnitsHead();
  renderUnitsBody();
}

function renderUnitsHead() {
  const cols = unitColumns(state.units.layer);
  const row = el("tr");
  for (const col of cols) {
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
    state.units.sortDir = col.key === "unit" || col.key === "label" ? 1 : -1; // largest effects first
  }
  renderUnitsHead();
  renderUnitsBody();
}

/** Compare two cell values; missing values go last whatever the direction. */
function compareCells(a, b, dir) {
  const missingA = a === null || a === undefined, missingB = b === null || b === undefined;
  if (missingA || missingB) return missingA === missingB ? 0 : missingA ? 1 : -1;
  if (typeof a === "string" || typeof b === "string") return dir * String(a).localeCompare(String(b));
  return dir * (a - b);
}

function filteredUnitRows() {
  const text = $("units-filter").value.trim().toLowerCase();
  const only = $("units-only").checked;
  const cols = unitColumns(state.units.layer);
  const col = cols.find((c) => c.key === state.units.sortKey) || cols[0];
  return state.units.rows
    .filter((r) => !text || String(r.label ?? "").toLowerCase().includes(text))
    .filter((r) => !only || r.interpretable || r.decisive.length > 0)
    .sort((a, b) => compareCells(col.get(a), col.get(b), state.units.sortDir) || a.unit - b.unit);
}

function renderUnitsBody() {
  const layer = state.units.layer;
  const cols = unitColumns(layer);
  const rows = filteredUnitRows();
  const body = clear($("units-table").tBodies[0]);
  for (const r of rows) {
    const href = `#units/${encodeURIComponent(layer)}/${r.unit}`;
    const tr = el("tr", { class: r.interpretable ? "interpretable" : null });
    for (const col of cols) tr.append(unitCell(r, col, href));
    tr.addEventListener("click", (event) => {
      if (!event.target.closest("a")) location.hash = href;
    });
    body.append(tr);
  }
  $("units-count").textContent = `${rows.length} of ${state.units.rows.length} units`;
}

function unitCell(r, col, href) {
  if (col.key === "unit") return el("td", { class: "num" }, el("a", { href, text: String(r.unit) }));
  const td = el("td", { class: col.num ? "num" : null, text: col.fmt ? col.fmt(r) : r[col.key] ?? "—" });
  if (col.ace && r.ace[col.ace] === null) {
    td.classList.add("muted");
    const est = r.estimate[col.ace];
    td.title = isNum(est) ? `not measured exactly; the screen estimates ${pp(est)}` : "not measured exactly";
  }
  if (col.key === "label" && r.interpretable) td.append(el("span", { class: "tag", text: "interp.", title: "IoU above the dissection threshold" }));
  if (col.key === "decisive" && r.decisive.length) td.title = r.decisive.map((d) => `${d.cls}: removes ${pct(d.removed, 0)}`).join("; ");
  return td;
}

// ---------------------------------------------------------------- a unit's page

async function showUnitPage(layer, unitText) {
  $("units-list").hidden = true;
  const page = clear($("unit-page"));
  page.hidden = false;
  const token = ++state.unitPageToken;
  const unit = Number(unitText);
  const count = unitCount(layer);
  page.append(el("p", {}, el("a", { href: `#units/${encodeURIComponent(layer)}`, text: `← ${layer} units` })));
  if (!layerInfo(layer)) {
    page.append(el("p", { class: "message error", text: `No layer ${layer} in this generator.` }));
    return;
  }
  if (!Number.isInteger(unit) || unit < 0 || unit >= count) {
    page.append(el("p", { class: "message error", text: `No unit ${unitText} in layer ${layer} (units 0..${count - 1}).` }));
    return;
  }
  const d = (dissectUnits(layer) || []).find((x) => x.unit === unit) || null;
  page.append(
    el("h2", {}, `${layer} · unit ${unit}`, d && d.label ? el("span", { class: "label-big", text: d.label }) : null),
    unitFacts(d),
    el("div", { class: "actions" }, el("button", {
      type: "button", class: "primary", text: "paint with this unit",
      onclick: () => { location.hash = `#paint/${encodeURIComponent(layer)}/${unit}`; },
    })),
  );
  const ace = aceFor(layer);
  if (ace) page.append(el("h3", { text: "Average causal effect" }), unitAceTable(ace, unit));
  const gallery = el("div", { class: "gallery" });
  page.append(el("h3", { text: "Top images" }), gallery);
  if (!d || !Array.isArray(d.top_seeds) || !isNum(d.threshold)) {
    gallery.append(el("p", { class: "muted", text: "No stored top images for this unit." }));
    return;
  }
  await loadUnitImages(layer, unit, d, gallery, token);
}

function unitFacts(d) {
  if (!d) return el("p", { class: "muted", text: "No dissection of this layer." });
  const rows = [
    ["label", d.label ?? "—"], ["IoU", fixed(d.iou, 4)], ["chance IoU", fixed(d.chance_iou, 4)],
    ["lift over chance", isNum(d.iou_lift) ? `×${fixed(d.iou_lift, 2)}` : "—"],
    ["threshold", fixed(d.threshold, 3)], ["interpretable", d.interpretable ? "yes" : "no"],
  ];
  return el("dl", { class: "facts" }, rows.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
}

function unitAceTable(ace, unit) {
  const head = el("tr", {}, ["class", "ACE", "± se", "95% interval", "screen estimate", "rank", "insert value", "decisive"]
    .map((t) => el("th", { text: t })));
  const body = el("tbody");
  for (const cls of aceClasses(ace)) {
    const e = ace.classes[cls];
    const value = e.unit_ace[unit];
    const rank = Array.isArray(e.ranking) ? e.ranking.indexOf(unit) : -1;
    const decisive = (e.decisive_units || []).find((x) => x.unit === unit);
    body.append(el("tr", {},
      el("td", {}, el("a", { href: `#classes/${encodeURIComponent(cls)}`, text: cls })),
      el("td", { class: "num", text: pp(value) }),
      el("td", { class: "num", text: e.unit_ace_se && isNum(e.unit_ace_se[unit]) ? pp(e.unit_ace_se[unit], 2, false) : "—" }),
      el("td", { class: "num", text: e.unit_ace_ci95 ? interval(e.unit_ace_ci95[unit], (x) => pp(x)) : "—" }),
      el("td", { class: "num muted", text: isNum(value) ? "" : pp(calibratedEstimate(e, unit)) }),
      el("td", { class: "num", text: rank >= 0 ? `${rank + 1} of ${e.ranking.length}` : "—" }),
      el("td", { class: "num", text: e.insert_value ? fixed(e.insert_value[unit], 3) : "—" }),
      el("td", { text: decisive ? `removes ${pct(decisive.removed_fraction, 0)}` : "" }),
    ));
  }
  return el("div", { class: "table-wrap" }, el("table", { class: "data" }, el("thead", {}, head), body));
}

async function loadUnitImages(layer, unit, d, gallery, token) {
  const max = (state.run.limits && state.run.limits.max_images) || d.top_seeds.length;
  const seeds = d.top_seeds.slice(0, max);
  const status = el("p", { class: "muted", text: `regenerating ${seeds.length} images…` });
  gallery.append(status);
  const query = new URLSearchParams({ layer, unit: String(unit), threshold: String(d.threshold), samples: seeds.join(",") });
  try {
    const answer = await api(`/api/unit-images?${query}`);
    if (token !== state.unitPageToken) return; // the user went elsewhere meanwhile
    status.remove();
    for (const item of answer.images || []) {
      gallery.append(el("figure", { class: "unit-image" },
        el("div", { class: "pair" }, image(item.image, `sample ${item.index}`, "pixelated mid"),
          image(item.overlay, `sample ${item.index}, unit ${unit} above its threshold`, "pixelated mid")),
        el("figcaption", {}, el("a", { href: `#paint/${encodeURIComponent(layer)}/${unit}`, text: `sample ${item.index}`,
          title: `paint with unit ${unit} on sample ${item.index}`,
          onclick: () => { state.pendingSample = item.index; } }), ` · area ${pct(item.area)}`)));
    }
  } catch (err) {
    if (token !== state.unitPageToken) return;
    status.textContent = `images not available: ${err.message}`;
    showMessage(`Unit images: ${err.message}`);
  }
}

// ---------------------------------------------------------------- Paint view

function setupPaint() {
  const layers = (state.run.layers || []).map((l) => l.name);
  const ace = state.results.ace;
  const select = $("paint-layer");
  for (const name of layers) select.append(el("option", { value: name, text: name }));
  const analysed = state.run.analysed_layers || [];
  select.value = ace && layers.includes(ace.layer) ? ace.layer : analysed[0] || layers[0] || "";
  for (const cls of ace ? Object.keys(ace.classes) : []) $("paint-class").append(el("option", { value: cls, text: cls }));
  const limits = state.run.limits || {};
  if (isNum(limits.max_sample)) $("paint-sample").max = String(limits.max_sample - 1);

  select.addEventListener("change", () => {
    setLayer(select.value);
    updatePaintUnits();
  });
  for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", onSourceChange);
  for (const id of ["paint-class", "paint-k", "paint-label", "paint-label-interp", "paint-list"]) {
    $(id).addEventListener("input", updatePaintUnits);
    $(id).addEventListener("change", updatePaintUnits);
  }
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", updatePaintUnits);
  $("paint-strength").addEventListener("input", () => {
    $("paint-strength-value").textContent = fixed(Number($("paint-strength").value), 2);
  });
  $("paint-sample").addEventListener("change", () => loadSample());
  $("paint-random").addEventListener("click", () => {
    // every index is a valid latent; a bounded range keeps the numbers readable
    const range = Math.min(isNum(limits.max_sample) ? limits.max_sample : RANDOM_SAMPLES, RANDOM_SAMPLES);
    $("paint-sample").value = String(Math.floor(Math.random() * range));
    loadSample();
  });
  $("paint-form").addEventListener("submit", (event) => {
    event.preventDefault();
    applyEdit();
  });
  $("paint-arms").addEventListener("click", requestArms);
  setupGrid();
  if (!ace) document.querySelector("input[name=source][value=class]").disabled = true;
  if (!ace) document.querySelector("input[name=source][value=list]").checked = true;
  setLayer(select.value);
  onSourceChange();
}

function paintSource() {
  return document.querySelector("input[name=source]:checked").value;
}

function paintMode() {
  return document.querySelector("input[name=mode]:checked").value;
}

/** A class's units live at ace's layer, so that source fixes the layer. */
function onSourceChange() {
  const source = paintSource();
  for (const box of document.querySelectorAll(".source-opts")) box.hidden = box.dataset.source !== source;
  const ace = state.results.ace;
  const select = $("paint-layer");
  select.disabled = source === "class" && Boolean(ace);
  if (source === "class" && ace && select.value !== ace.layer) setLayer(ace.layer);
  if (source === "label" && !dissectUnits(select.value)) {
    const analysed = (state.run.analysed_layers || []).find((l) => dissectUnits(l));
    if (analysed) setLayer(analysed);
  }
  updatePaintUnits();
}

/** Switch the paint layer: its grid size and its dissection labels. */
function setLayer(layer) {
  $("paint-layer").value = layer;
  const info = layerInfo(layer);
  const [h, w] = info && Array.isArray(info.size) ? info.size : [1, 1];
  if (state.paint.layer !== layer || state.paint.h !== h || state.paint.w !== w) {
    state.paint = { ...state.paint, layer, h, w, mask: new Uint8Array(h * w) };
    drawGrid();
  }
  fillLabelSelect(layer);
}

function fillLabelSelect(layer) {
  const select = $("paint-label");
  const previous = select.value;
  const counts = new Map();
  for (const u of dissectUnits(layer) || []) {
    if (!u.label) continue;
    const c = counts.get(u.label) || { all: 0, interp: 0 };
    c.all += 1;
    if (u.interpretable) c.interp += 1;
    counts.set(u.label, c);
  }
  clear(select);
  const labels = [...counts.keys()].sort((a, b) => counts.get(b).interp - counts.get(a).interp || a.localeCompare(b));
  for (const label of labels) {
    const c = counts.get(label);
    select.append(el("option", { value: label, text: `${label} (${c.interp} interpretable, ${c.all} in all)` }));
  }
  if (labels.includes(previous)) select.value = previous;
}

/** The units (and insertion values) the form describes: {units, values, note} or {error}. */
function paintUnits() {
  const source = paintSource();
  const layer = $("paint-layer").value;
  const channels = (layerInfo(layer) || {}).channels || 0;
  if (source === "class") {
    const ace = state.results.ace;
    const cls = $("paint-class").value;
    const entry = ace && ace.classes[cls];
    if (!entry) return { error: "no ACE class chosen" };
    const k = Math.max(1, Math.min(Number($("paint-k").value) || 1, entry.ranking.length));
    const units = entry.ranking.slice(0, k);
    const values = units.map((u) => entry.insert_value[u]);
    return { units, values, note: `top ${k} ACE units of ${cls}` };
  }
  if (source === "label") {
    const label = $("paint-label").value;
    const interp = $("paint-label-interp").checked;
    const units = (dissectUnits(layer) || []).filter((u) => u.label === label && (!interp || u.interpretable)).map((u) => u.unit);
    if (!label) return { error: "this layer has no dissection labels" };
    if (!units.length) return { error: `no ${interp ? "interpretable " : ""}unit labelled ${label}` };
    return { units, values: null, note: `${interp ? "interpretable " : ""}units labelled ${label}` };
  }
  const parts = $("paint-list").value.split(/[\s,]+/).filter(Boolean);
  if (!parts.length) return { error: "type unit numbers, e.g. 3, 17" };
  const units = [];
  for (const p of parts) {
    const u = Number(p);
    if (!Number.isInteger(u) || u < 0 || u >= channels) return { error: `"${p}" is not a unit of ${layer} (0..${channels - 1})` };
    if (!units.includes(u)) units.push(u);
  }
  return { units, values: null, note: "typed units" };
}

function updatePaintUnits() {
  const chosen = paintUnits();
  const box = clear($("paint-units"));
  if (chosen.error) {
    box.append(el("span", { class: "warn", text: chosen.error }));
    return;
  }
  const insertNote = paintMode() === "insert"
    ? chosen.values ? " · insertion values from ace.json" : " · insertion values: each unit's 99th percentile"
    : "";
  box.append(`${chosen.note}: `, el("b", { text: chosen.units.join(", ") }), ` (${chosen.units.length} at ${$("paint-layer").value})${insertNote}`);
}

/** #paint/LAYER/U1,U2 (from a unit's page): the typed-list source with those units. */
function presetPaint(layer, unitsText) {
  if (!layerInfo(layer)) {
    showMessage(`No layer ${layer} in this generator.`);
    return;
  }
  document.querySelector("input[name=source][value=list]").checked = true;
  $("paint-list").value = unitsText.split(",").join(", ");
  onSourceChange();
  setLayer(layer);
  updatePaintUnits();
  if (state.pendingSample !== null) {
    $("paint-sample").value = String(state.pendingSample);
    state.pendingSample = null;
    loadSample();
  }
}

/** Show a sample when Paint opens with none shown or on its way. */
function ensureSample() {
  if (!state.paint.sample && !state.paint.sampleLoading) loadSample();
}

function sampleIndex() {
  const value = Number($("paint-sample").value);
  const max = (state.run.limits || {}).max_sample;
  if (!Number.isInteger(value) || value < 0 || (isNum(max) && value >= max)) {
    throw new ApiError(`sample must be an integer in [0, ${isNum(max) ? max : "…"})`, 400);
  }
  return value;
}

async function loadSample() {
  const token = ++state.paint.sampleToken;
  let index;
  try {
    index = sampleIndex();
  } catch (err) {
    showMessage(err.message);
    return;
  }
  state.paint.sampleLoading = true;
  try {
    const answer = await api(`/api/sample/${index}`);
    if (token !== state.paint.sampleToken) return;
    state.paint.sample = answer;
    showSampleImage();
    renderSampleAreas(answer);
  } catch (err) {
    showMessage(`Sample ${index}: ${err.message}`);
  } finally {
    if (token === state.paint.sampleToken) state.paint.sampleLoading = false;
  }
}

function showSampleImage() {
  const answer = state.paint.sample;
  if (!answer) return;
  const seg = $("paint-show-seg") && $("paint-show-seg").checked;
  const src = seg ? answer.segmentation : answer.image;
  $("paint-image").src = typeof src === "string" && src.startsWith("data:image/png;base64,") ? src : "";
}

function renderSampleAreas(answer) {
  const box = clear($("paint-sample-seg"));
  const toggle = el("input", { type: "checkbox", id: "paint-show-seg" });
  toggle.addEventListener("change", showSampleImage);
  const areas = Object.entries(answer.areas || {}).filter(([, a]) => isNum(a) && a >= MIN_CHANGE).sort((a, b) => b[1] - a[1]);
  box.append(el("label", {}, toggle, " show its segmentation"), el("div", { class: "muted" },
    `sample ${answer.index}: `, areas.map(([label, a]) => `${label} ${pct(a, 1)}`).join(", ")));
}

// ---- the grid canvas: one cell per feature-map pixel

function setupGrid() {
  const canvas = $("paint-grid");
  canvas.addEventListener("contextmenu", (event) => event.preventDefault()); // right-drag erases
  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.button !== 2) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    const erase = $("paint-eraser").checked || event.shiftKey || event.button === 2;
    state.paint.stroke = erase ? 0 : 1;
    paintAt(event);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (state.paint.stroke !== null) paintAt(event);
  });
  const stop = () => { state.paint.stroke = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("paint-clear").addEventListener("click", () => { state.paint.mask.fill(0); drawGrid(); });
  $("paint-whole").addEventListener("click", () => { state.paint.mask.fill(1); drawGrid(); });
}

function paintAt(event) {
  const { h, w, mask } = state.paint;
  const rect = event.currentTarget.getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) / rect.width) * w);
  const y = Math.floor(((event.clientY - rect.top) / rect.height) * h);
  if (x < 0 || y < 0 || x >= w || y >= h) return;
  if (mask[y * w + x] === state.paint.stroke) return;
  mask[y * w + x] = state.paint.stroke;
  drawGrid();
}

function drawGrid() {
  const canvas = $("paint-grid");
  const { h, w, mask } = state.paint;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!mask) return;
  const cw = canvas.width / w, ch = canvas.height / h;
  ctx.fillStyle = "rgba(255, 196, 0, 0.45)";
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) if (mask[y * w + x]) ctx.fillRect(x * cw, y * ch, cw, ch);
  }
  ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let x = 1; x < w; x++) { ctx.moveTo(Math.round(x * cw) + 0.5, 0); ctx.lineTo(Math.round(x * cw) + 0.5, canvas.height); }
  for (let y = 1; y < h; y++) { ctx.moveTo(0, Math.round(y * ch) + 0.5); ctx.lineTo(canvas.width, Math.round(y * ch) + 0.5); }
  ctx.stroke();
  const painted = mask.reduce((n, v) => n + v, 0);
  $("paint-region-note").textContent = painted
    ? `${painted} of ${h * w} cells (${h}×${w} feature map)`
    : `nothing painted: the edit applies to the whole ${h}×${w} map`;
}

/** The painted region as h rows of w 0/1 numbers, or null (the whole map) when nothing is painted. */
function paintRegion() {
  const { h, w, mask } = state.paint;
  if (!mask || !mask.some((v) => v)) return null;
  const rows = [];
  for (let y = 0; y < h; y++) rows.push(Array.from(mask.subarray(y * w, (y + 1) * w)));
  return rows;
}

// ---- edit and DID arms

/** The body of POST /api/edit and /api/arms, or null (with a message) when the form is incomplete. */
function editBody() {
  const chosen = paintUnits();
  if (chosen.error) {
    showMessage(`Units: ${chosen.error}`);
    return null;
  }
  let sample;
  try {
    sample = sampleIndex();
  } catch (err) {
    showMessage(err.message);
    return null;
  }
  const mode = paintMode();
  return {
    sample, layer: $("paint-layer").value, units: chosen.units, mode,
    strength: Number($("paint-strength").value),
    values: mode === "insert" ? chosen.values : null, // ablation ignores them; null = the server's default
    region: paintRegion(),
  };
}

/** Run one model request with the Paint buttons disabled; errors go to the message area. */
async function modelRequest(path, body, label) {
  if (state.paint.busy) return null;
  state.paint.busy = true;
  for (const id of ["paint-apply", "paint-arms"]) $(id).disabled = true;
  $("view-paint").classList.add("busy");
  try {
    const answer = await api(path, body);
    clearMessages(); // earlier errors were about earlier attempts
    return answer;
  } catch (err) {
    showMessage(`${label}: ${err.message}`);
    return null;
  } finally {
    state.paint.busy = false;
    for (const id of ["paint-apply", "paint-arms"]) $(id).disabled = false;
    $("view-paint").classList.remove("busy");
  }
}

function describeEdit(body) {
  const region = body.region ? `${body.region.flat().filter(Boolean).length} painted cells` : "the whole map";
  return `${body.mode} ${body.units.length} unit${body.units.length === 1 ? "" : "s"} of ${body.layer} ` +
    `(${body.units.join(", ")}) at α = ${fixed(body.strength, 2)} over ${region}, sample ${body.sample}`;
}

async function applyEdit() {
  const body = editBody();
  if (!body) return;
  const answer = await modelRequest("/api/edit", body, "Edit");
  if (!answer) return;
  const box = clear($("paint-result"));
  box.append(
    el("h3", {}, "Edit ", el("span", { class: "muted small", text: `${describeEdit(body)} · ${fixed(answer.ms, 0)} ms` })),
    el("div", { class: "row" },
      el("div", { class: "figures" },
        figure(answer.original?.image, "original", "pixelated mid", "original"),
        figure(answer.original?.segmentation, "original segmentation", "pixelated mid", "original-seg"),
        figure(answer.edited?.image, "edited", "pixelated mid", "edited"),
        figure(answer.edited?.segmentation, "edited segmentation", "pixelated mid", "edited-seg")),
      changeTable(answer.change, "area change", (x) => pp(x))),
  );
}

/** A table of label -> value for the values above MIN_CHANGE in size, largest first. */
function changeTable(values, title, fmt, extra) {
  const rows = Object.entries(values || {}).filter(([, v]) => isNum(v) && Math.abs(v) > MIN_CHANGE)
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  if (!rows.length) return el("p", { class: "muted small", text: `${title}: no class changes by more than ${pp(MIN_CHANGE, 2, false)}.` });
  const head = el("tr", {}, el("th", { text: "class" }), el("th", { class: "num", text: title }), extra ? el("th", { text: extra.title }) : null);
  const body = rows.map(([label, v]) => el("tr", {}, el("td", {}, swatchFor(label), label),
    el("td", { class: `num ${v > 0 ? "pos" : "neg"}`, text: fmt(v) }), extra ? el("td", { text: extra.get(label) }) : null));
  return el("table", { class: "data compact" }, el("thead", {}, head), el("tbody", {}, body));
}

function swatchFor(label) {
  const i = (state.run.labels || []).indexOf(label);
  const rgb = i >= 0 ? (state.run.colours || [])[i] : null;
  const swatch = el("span", { class: "swatch" });
  if (rgb) swatch.style.background = `rgb(${rgb.map(Number).join(",")})`;
  return swatch;
}

// the arms laid out as a 2 x 2 table: rows β then β', columns u then u' (the differences ΔY takes)
const ARM_GRID = ["original", "intervened_fixed_beta", "original_swapped_beta", "intervened"];

function armOrder(arms) {
  const known = ARM_GRID.filter((name) => name in arms);
  const rest = Object.keys(arms).filter((name) => !ARM_GRID.includes(name));
  return [...known, ...rest].map((name) => [name, arms[name]]);
}

async function requestArms() {
  const body = editBody();
  if (!body) return;
  const answer = await modelRequest("/api/arms", body, "DID arms");
  if (!answer) return;
  const box = clear($("paint-arms-result"));
  const titles = answer.arm_titles || {};
  const arms = armOrder(answer.arms || {}).map(([arm, view]) => el("div", { class: "arm", "data-arm": arm },
    el("h4", {}, titles[arm] || arm, el("span", { class: "muted small", text: ` ${arm.replace(/_/g, " ")}` })),
    el("div", { class: "pair" }, image(view.image, `${arm} image`, "pixelated mid"),
      image(view.segmentation, `${arm} segmentation`, "pixelated mid"))));
  const did = answer.did || {};
  box.append(
    el("h3", {}, "DID arms ", el("span", { class: "muted small", text: `${describeEdit(body)} · ${fixed(answer.ms, 0)} ms` })),
    el("p", { class: "small muted", text: `β controlled at: ${(answer.sites || []).join(", ") || "—"}. ` +
      "ΔY = [Y(β',u') − Y(β',u)] − [Y(β,u') − Y(β,u)]: what pixel normalisation does beyond the edit." }),
    el("div", { class: "row" },
      el("div", { class: "arms" }, arms),
      el("div", {},
        el("figure", { class: "delta" }, image(did.image, "ΔY heat map", "pixelated mid"),
          el("figcaption", { text: `|ΔY| (brighter: more) · mean |ΔY| ${fixed(did.mean_abs, 4)}` })),
        changeTable(did.area, "DID of area", (x) => pp(x)))),
  );
}

// ---------------------------------------------------------------- Classes view

function renderClasses() {
  if (state.classesRendered) return;
  state.classesRendered = true;
  const ace = state.results.ace;
  const body = clear($("classes-body"));
  const index = clear($("classes-index"));
  if (!ace) {
    body.append(el("p", { class: "muted", text: "This run has no ACE result, so there is no per-class view." }));
    return;
  }
  index.append(el("span", { class: "muted", text: `ACE at ${ace.layer}, ${ace.samples} latents: ` }));
  for (const cls of Object.keys(ace.classes)) {
    index.append(el("a", { href: `#classes/${encodeURIComponent(cls)}`, text: cls }));
    body.append(classCard(cls, ace.classes[cls], ace));
  }
  const files = Array.isArray(state.run.files) ? state.run.files.filter((f) => /\.png$/i.test(f)) : [];
  if (files.length) body.append(runPlots(files));
}

function classCard(cls, entry, ace) {
  const did = state.results.did && state.results.did.classes ? state.results.did.classes[cls] : null;
  const ent = state.results.entangle && state.results.entangle.classes ? state.results.entangle.classes[cls] : null;
  const k = aceTopK(entry);
  const screen = entry.screen || {};
  const facts = [
    `mean area ${pct(entry.base_area, 2)}`,
    screen.enabled ? `${screen.measured} of ${screen.units} units measured exactly` : "every unit measured",
    `ACE of the top ${k}: ${pp((entry.topk_ace || [])[Math.min(k, (entry.topk_ace || []).length) - 1])}`,
    entry.decisive_units && entry.decisive_units.length ? `decisive units: ${entry.decisive_units.map((d) => d.unit).join(", ")}` : null,
  ].filter(Boolean);
  return el("section", { class: "class-card panel", id: `class-${cls}` },
    el("h2", {}, swatchFor(cls), cls, ent ? el("span", { class: `call call-${ent.call}`, text: CALLS[ent.call] || ent.call }) : null),
    el("p", { class: "muted small", text: facts.join(" · ") }),
    el("div", { class: "charts" },
      el("figure", {}, aceHistogram(entry, k), el("figcaption", { text: `ACE over units (exact values; ▲ the top ${k})` })),
      el("figure", {}, ablationCurve(entry), el("figcaption", { text: "share of the class removed by ablating its top k units" }))),
    el("div", { class: "actions" }, el("a", {
      class: "button", href: "#paint", text: `paint with the top ${Math.min(k, 5)} units`,
      onclick: () => presetClass(cls, Math.min(k, 5)),
    })),
    el("div", { class: "row" },
      did ? didBlock(cls, did) : el("p", { class: "muted small", text: "No DID for this class." }),
      ent ? entangleBlock(cls, ent) : null),
  );
}

/** Paint with a class's top-k units: selected before the hash changes to #paint. */
function presetClass(cls, k) {
  document.querySelector("input[name=source][value=class]").checked = true;
  $("paint-class").value = cls;
  $("paint-k").value = String(k);
  onSourceChange();
}

/** Linear scale from [d0, d1] to [r0, r1]. */
function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (x) => r0 + ((x - d0) / span) * (r1 - r0);
}

function aceHistogram(entry, k) {
  const W = 380, H = 170, M = { l: 34, r: 10, t: 10, b: 40 };
  const values = entry.unit_ace.filter(isNum);
  const top = (entry.ranking || []).slice(0, k).filter((u) => isNum(entry.unit_ace[u]));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "histogram of per-unit ACE" });
  if (!values.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", text: "no measured unit" }));
    return root;
  }
  const lo = Math.min(0, ...values), hi = Math.max(0, ...values);
  const bins = 24, width = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / width))] += 1;
  const x = scale(lo, hi, M.l, W - M.r), y = scale(0, Math.max(...counts), H - M.b, M.t);
  counts.forEach((c, i) => {
    if (!c) return;
    const x0 = x(lo + i * width), x1 = x(lo + (i + 1) * width);
    root.append(svg("rect", { x: x0 + 0.5, y: y(c), width: Math.max(1, x1 - x0 - 1), height: H - M.b - y(c), class: "bar" },
      svg("title", { text: `${c} unit${c === 1 ? "" : "s"} in [${pp(lo + i * width)}, ${pp(lo + (i + 1) * width)})` })));
  });
  for (const u of top) { // the top-k units as marks under the axis
    const px = x(entry.unit_ace[u]);
    root.append(svg("path", { d: `M${px},${H - M.b + 3} l-4,7 h8 z`, class: "mark" },
      svg("title", { text: `unit ${u}: ${pp(entry.unit_ace[u])}` })));
  }
  const ppTicks = niceTicks(100 * lo, 100 * hi, 5).map((t) => t / 100);
  const digits = Math.max(0, -Math.floor(Math.log10((ppTicks[1] - ppTicks[0]) * 100 || 1)));
  root.append(...axes(W, H, M, x, y, ppTicks, [0, Math.max(...counts)],
    (v) => fixed(100 * v, digits, true), (v) => String(v), "ACE (pp of the image)", "units"));
  root.append(svg("line", { x1: x(0), x2: x(0), y1: M.t, y2: H - M.b, class: "zero" }));
  return root;
}

function ablationCurve(entry) {
  const W = 380, H = 170, M = { l: 40, r: 10, t: 10, b: 40 };
  const ks = entry.curve_k || [], fr = entry.topk_removed_fraction || [];
  const points = ks.map((kk, i) => [kk, fr[i]]).filter(([a, b]) => isNum(a) && isNum(b));
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": "ablation curve" });
  if (!points.length) return root;
  const kmax = Math.max(...points.map((p) => p[0]), 1);
  const ymin = Math.min(0, ...points.map((p) => p[1])), ymax = Math.max(1, ...points.map((p) => p[1]));
  const x = scale(0, kmax, M.l, W - M.r), y = scale(ymin, ymax, H - M.b, M.t);
  root.append(...axes(W, H, M, x, y, points.map((p) => p[0]), niceTicks(ymin, ymax, 4),
    (v) => String(v), (v) => pct(v, 0), "top-k units ablated", "removed"));
  root.append(svg("polyline", { points: points.map(([a, b]) => `${x(a)},${y(b)}`).join(" "), class: "line" }));
  for (const [a, b] of points) {
    root.append(svg("circle", { cx: x(a), cy: y(b), r: 3, class: "dot" }, svg("title", { text: `top ${a}: ${pct(b, 1)} removed` })));
  }
  return root;
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
function axes(W, H, M, x, y, xticks, yticks, xfmt, yfmt, xlabel, ylabel) {
  const out = [
    svg("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, class: "axis" }),
    svg("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b, class: "axis" }),
  ];
  for (const t of xticks) out.push(svg("text", { x: x(t), y: H - M.b + 22, "text-anchor": "middle", class: "tick", text: xfmt(t) }));
  for (const t of yticks) out.push(svg("text", { x: M.l - 4, y: y(t) + 3, "text-anchor": "end", class: "tick", text: yfmt(t) }));
  out.push(svg("text", { x: (M.l + W - M.r) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label", text: xlabel }));
  out.push(svg("text", { x: 10, y: M.t + 6, class: "axis-label", text: ylabel, transform: `rotate(-90 10 ${M.t + 6})`, "text-anchor": "end" }));
  return out;
}

function entangleBlock(cls, ent) {
  const tvs = ent.top_vs_second || {};
  const rows = [
    ["call", CALLS[ent.call] || ent.call],
    ["evidence", ent.why || "—"],
    ["remains after ablation", `${pct(ent.remaining_fraction, 0)} ${ent.remaining_ci95 ? interval(ent.remaining_ci95, (v) => pct(v, 0)) : ""}`],
    ["emerging", Object.entries(ent.emerging || {}).map(([k, v]) => `${k} +${pct(v, 0)} of ${cls}'s area`).join(", ") || "none"],
    ["top-share of positive ACE", ent.ace_distribution ? `${pct(ent.ace_distribution.top_share, 0)} (flatness ${fixed(ent.ace_distribution.flatness, 2)})` : "—"],
    ["summed ACE of its units", tvs.top ? `${tvs.top} first, ${tvs.second ?? "—"} second, ratio ${fixed(tvs.ratio, 1)}${tvs.overwhelming ? " (overwhelming)" : ""}` : "—"],
  ];
  return el("div", { class: "entangle" }, el("h3", { text: "Entanglement" }),
    el("dl", { class: "facts wide" }, rows.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])));
}

function didBlock(cls, did) {
  const head = el("tr", {}, ["class", "DID of area", "95% interval", "q", ""].map((t, i) => el("th", { class: i && i < 4 ? "num" : null, text: t })));
  const rows = Object.entries(did.area_did || {}).map(([label, a]) => el("tr", {
    class: [label === cls ? "ablated" : "", a.significant ? "significant" : ""].join(" ").trim() || null,
  },
  el("td", {}, swatchFor(label), label, label === cls ? el("span", { class: "tag", text: "ablated" }) : null),
  el("td", { class: `num mean ${a.mean > 0 ? "pos" : a.mean < 0 ? "neg" : ""}`, text: pp(a.mean) }),
  el("td", { class: "num", text: interval(a.ci95, (v) => pp(v)) }),
  el("td", { class: "num", text: pval(a.q) }),
  el("td", {}, a.significant ? el("span", { class: "tag", text: "significant", title: "q below the false discovery rate" }) : null)));
  const abl = did.ablation && did.ablation.remaining;
  const summary = [
    `ablating ${(did.units || []).length} units (${(did.units || []).join(", ")}) on ${did.samples} samples`,
    `mean |ΔY| ${fixed(did.pixel_did_mean_abs, 4)}`,
    abl ? `${cls} remaining ${pct(abl.mean, 0)} ${interval(abl.ci95, (v) => pct(v, 0))}` : null,
  ].filter(Boolean).join(" · ");
  return el("div", { class: "did" }, el("h3", { text: "Difference in differences" }),
    el("p", { class: "muted small", text: summary }),
    el("div", { class: "table-wrap" }, el("table", { class: "data compact" }, el("thead", {}, head), el("tbody", {}, rows))));
}

function runPlots(files) {
  return el("details", { class: "panel" }, el("summary", { text: `The run's plots (${files.length})` }),
    el("div", { class: "plots" }, files.map((name) => el("figure", {},
      el("img", { src: `/files/${encodeURIComponent(name)}`, alt: name, loading: "lazy" }), el("figcaption", { text: name })))));
}

document.addEventListener("DOMContentLoaded", init);
