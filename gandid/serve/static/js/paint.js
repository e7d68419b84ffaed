// Paint: a sample, units (from the unit sets the analyses offer, or a typed list), a painted region and
// the edit's strength; the requests and their results are edit.js's.
import { ApiError, api, showMessage } from "./api.js";
import { groupsAt, unitSets } from "./described.js";
import { $, clear, el } from "./dom.js";
import { applyEdit, MIN_CHANGE, requestArms } from "./edit.js";
import { fill, fixed, isNum, pct } from "./format.js";
import { drawGrid, paintRegion, setupGrid } from "./grid.js";
import { layerInfo, state } from "./state.js";

const RANDOM_SAMPLES = 100000; // "random" picks a sample index below this
const sources = new Map(); // radio value -> {set, select, k, subset} for the analyses' unit sets

export function setupPaint() {
  const layers = (state.run.layers || []).map((l) => l.name);
  const select = $("paint-layer");
  for (const name of layers) select.append(el("option", { value: name, text: name }));
  const analysed = state.run.analysed_layers || [];
  select.value = analysed[0] || layers[0] || "";
  addSources();
  const limits = state.run.limits || {};
  if (isNum(limits.max_sample)) $("paint-sample").max = String(limits.max_sample - 1);

  select.addEventListener("change", () => {
    setLayer(select.value);
    updatePaintUnits();
  });
  for (const radio of document.querySelectorAll("input[name=source]")) radio.addEventListener("change", onSourceChange);
  $("paint-list").addEventListener("input", updatePaintUnits);
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
    const body = editBody();
    if (body) applyEdit(body);
  });
  $("paint-arms").addEventListener("click", () => {
    const body = editBody();
    if (body) requestArms(body);
  });
  setupGrid();
  setLayer(select.value);
  onSourceChange();
}

/** One radio per unit set, before the typed list; the first preferred one starts checked. */
function addSources() {
  const anchor = document.querySelector("input[name=source][value=list]").closest(".source");
  for (const set of unitSets()) {
    const radio = el("input", { type: "radio", name: "source", value: set.id });
    const select = el("select", { "aria-label": set.title ?? set.id });
    const k = Number.isInteger(set.k) ? el("input", { type: "number", min: 1, value: set.k, size: 4, class: "k" }) : null;
    const subset = set.subset ? el("input", { type: "checkbox", checked: set.subset.default !== false }) : null;
    anchor.before(el("div", { class: "source" }, el("label", {}, radio, ` ${set.title ?? set.id}`),
      el("div", { class: "source-opts", "data-source": set.id }, select,
        k ? el("label", {}, "k ", k) : null, subset ? el("label", {}, subset, ` ${set.subset.label ?? ""}`) : null)));
    for (const input of [select, k, subset].filter(Boolean)) {
      input.addEventListener("input", updatePaintUnits);
      input.addEventListener("change", updatePaintUnits);
    }
    sources.set(set.id, { set, select, k, subset });
  }
  const preferred = [...sources.values()].find((s) => s.set.preferred);
  document.querySelector(`input[name=source][value="${CSS.escape(preferred ? preferred.set.id : "list")}"]`).checked = true;
}

function paintSource() {
  return document.querySelector("input[name=source]:checked").value;
}

function paintMode() {
  return document.querySelector("input[name=mode]:checked").value;
}

/** A set at one layer (fixed_layer) fixes the layer; another moves to a layer where it has units. */
function onSourceChange() {
  const source = paintSource();
  for (const box of document.querySelectorAll(".source-opts")) box.hidden = box.dataset.source !== source;
  const chosen = sources.get(source);
  const select = $("paint-layer");
  select.disabled = Boolean(chosen && chosen.set.fixed_layer);
  if (chosen && chosen.set.fixed_layer) {
    const only = Object.keys(chosen.set.layers)[0];
    if (only && layerInfo(only) && select.value !== only) setLayer(only);
  } else if (chosen && !groupsAt(chosen.set, select.value).length) {
    const layers = [...(state.run.analysed_layers || []), ...Object.keys(chosen.set.layers)];
    const other = layers.find((l) => layerInfo(l) && groupsAt(chosen.set, l).length);
    if (other) setLayer(other);
  }
  updatePaintUnits();
}

/** Switch the paint layer: its grid size and the groups each unit set has there. */
function setLayer(layer) {
  $("paint-layer").value = layer;
  const info = layerInfo(layer);
  const [h, w] = info && Array.isArray(info.size) ? info.size : [1, 1];
  if (state.paint.layer !== layer || state.paint.h !== h || state.paint.w !== w) {
    state.paint = { ...state.paint, layer, h, w, mask: new Uint8Array(h * w) };
    drawGrid();
  }
  for (const { set, select } of sources.values()) {
    const previous = select.value;
    clear(select).append(...groupsAt(set, layer).map((g) => el("option", { value: g.name, text: g.text ?? g.name })));
    if ([...select.options].some((o) => o.value === previous)) select.value = previous;
  }
}

/** The units (and insertion values) a unit set gives: {units, values, note} or {error}. */
function setUnits({ set, select, k, subset }, layer) {
  const group = groupsAt(set, layer).find((g) => g.name === select.value);
  if (!group) return { error: set.empty ?? "nothing to choose at this layer" };
  const narrowed = Boolean(subset && subset.checked);
  const all = Array.isArray(group.units) ? group.units : [];
  const values = Array.isArray(group.values) ? new Map(all.map((u, i) => [u, group.values[i]])) : null;
  let units = narrowed ? (Array.isArray(group.subset) ? group.subset : []) : all;
  let count = units.length;
  if (k) {
    count = Math.max(1, Math.min(Number(k.value) || 1, units.length));
    units = units.slice(0, count);
  }
  const vars = { group: group.name, k: count, subset: narrowed ? `${set.subset.word ?? set.subset.label} ` : "" };
  if (!units.length) return { error: fill(set.none ?? "no {subset}units in {group}", vars) };
  return { units, values: values ? units.map((u) => values.get(u) ?? null) : null,
    note: fill(set.note ?? "{subset}units of {group}", vars), valuesNote: set.values_note };
}

/** The units (and insertion values) the form describes: {units, values, note} or {error}. */
function paintUnits() {
  const layer = $("paint-layer").value;
  const source = sources.get(paintSource());
  if (source) return setUnits(source, layer);
  const channels = (layerInfo(layer) || {}).channels || 0;
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
    ? chosen.values ? ` · ${chosen.valuesNote ?? "insertion values from the analysis"}` : " · insertion values: each unit's 99th percentile"
    : "";
  box.append(`${chosen.note}: `, el("b", { text: chosen.units.join(", ") }), ` (${chosen.units.length} at ${$("paint-layer").value})${insertNote}`);
}

/** #paint/LAYER/U1,U2 (from a unit's page): the typed-list source with those units. */
export function presetPaint(layer, unitsText) {
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

/** Paint with a unit set's group (e.g. from a class card): chosen before the hash changes to #paint. */
export function presetSet(id, group, k) {
  const source = sources.get(id);
  if (!source) return;
  document.querySelector(`input[name=source][value="${CSS.escape(id)}"]`).checked = true;
  onSourceChange();
  source.select.value = String(group);
  if (source.k && Number.isInteger(k)) source.k.value = String(k);
  updatePaintUnits();
}

/** Show a sample when Paint opens with none shown or on its way. */
export function ensureSample() {
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
