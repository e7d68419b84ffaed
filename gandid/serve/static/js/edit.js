// Paint's results: an edit (original beside edited) and the four DID arms of the same edit with ΔY.
import { api, clearMessages, showMessage } from "./api.js";
import { $, clear, el, figure, image, swatchFor } from "./dom.js";
import { fixed, isNum, pp } from "./format.js";
import { state } from "./state.js";

export const MIN_CHANGE = 0.0005; // area changes smaller than this (0.05 pp) are left out of the tables

// the arms laid out as a 2 x 2 table: rows β then β', columns u then u' (the differences ΔY takes)
const ARM_GRID = ["original", "intervened_fixed_beta", "original_swapped_beta", "intervened"];

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

/** POST /api/edit with `body` (see paint.js's editBody) and show the original beside the edited sample. */
export async function applyEdit(body) {
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
function changeTable(values, title, fmt) {
  const rows = Object.entries(values || {}).filter(([, v]) => isNum(v) && Math.abs(v) > MIN_CHANGE)
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  if (!rows.length) return el("p", { class: "muted small", text: `${title}: no class changes by more than ${pp(MIN_CHANGE, 2, false)}.` });
  const head = el("tr", {}, el("th", { text: "class" }), el("th", { class: "num", text: title }));
  const body = rows.map(([label, v]) => el("tr", {}, el("td", {}, swatchFor(label), label),
    el("td", { class: `num ${v > 0 ? "pos" : "neg"}`, text: fmt(v) })));
  return el("table", { class: "data compact" }, el("thead", {}, head), el("tbody", {}, body));
}

function armOrder(arms) {
  const known = ARM_GRID.filter((name) => name in arms);
  const rest = Object.keys(arms).filter((name) => !ARM_GRID.includes(name));
  return [...known, ...rest].map((name) => [name, arms[name]]);
}

/** POST /api/arms with `body` and show the four arms, ΔY and the DID of each class's area. */
export async function requestArms(body) {
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
