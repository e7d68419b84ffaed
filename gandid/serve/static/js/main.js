// gandid explorer: the browser side of `gandid serve` (docs/serve.md). Native ES modules, no build step, no
// network access beyond this server. What each analysis shows comes from its description (GET /api/analyses):
// no module here names an analysis.
import { api, showMessage } from "./api.js";
import { renderClasses } from "./classes.js";
import { $, clear, el } from "./dom.js";
import { ensureSample, presetPaint, setupPaint } from "./paint.js";
import { state } from "./state.js";
import { showUnitPage } from "./unit.js";
import { setupUnits, showUnitsList } from "./units.js";

const VIEWS = ["units", "paint", "classes"];

window.state = state; // for the browser tests and the console

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
  await loadAnalyses();
  setupUnits();
  setupPaint();
  window.addEventListener("hashchange", route);
  route();
}

async function loadAnalyses() {
  try {
    const answer = await api("/api/analyses");
    state.analyses = Array.isArray(answer.analyses) ? answer.analyses : [];
  } catch (err) {
    showMessage(`Cannot load the analyses' results: ${err.message}`);
    return;
  }
  for (const a of state.analyses) if (a.error) showMessage(`Cannot show ${a.name}'s result: ${a.error}`);
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

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
