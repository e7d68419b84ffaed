// A unit's page (#units/LAYER/UNIT): the sections the analyses describe, and its regenerated top images.
import { api, showMessage } from "./api.js";
import { factList, table } from "./blocks.js";
import { absentNotes, unitCount, unitHeadlines, unitSections } from "./described.js";
import { $, clear, el, image } from "./dom.js";
import { isNum, pct } from "./format.js";
import { layerInfo, state } from "./state.js";

export async function showUnitPage(layer, unitText) {
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
  const sections = unitSections(layer).map(({ section }) => section);
  const absent = absentNotes(layer);
  page.append(...[
    el("h2", {}, `${layer} · unit ${unit}`, unitHeadlines(layer, unit).map((h) => el("span", { class: "label-big", text: h }))),
    sections.filter((s) => s.kind === "facts").map((s) => factList(s.rows, unit)),
    absent.length ? el("p", { class: "muted", text: absent.join(" ") }) : [],
    el("div", { class: "actions" }, el("button", {
      type: "button", class: "primary", text: "paint with this unit",
      onclick: () => { location.hash = `#paint/${encodeURIComponent(layer)}/${unit}`; },
    })),
    sections.filter((s) => s.kind === "table").map((s) => [el("h3", { text: s.title ?? "" }), table(s, unit)]),
  ].flat(2));
  // galleries last: their images are regenerated, so they arrive after the rest of the page
  for (const s of sections.filter((x) => x.kind === "images")) {
    const gallery = el("div", { class: "gallery" });
    page.append(el("h3", { text: s.title ?? "Images" }), gallery);
    const samples = Array.isArray(s.samples) ? s.samples[unit] : null;
    const threshold = Array.isArray(s.thresholds) ? s.thresholds[unit] : null;
    if (!Array.isArray(samples) || !samples.length || !isNum(threshold)) {
      gallery.append(el("p", { class: "muted", text: s.missing ?? "No stored images for this unit." }));
      continue;
    }
    await loadUnitImages(layer, unit, samples, threshold, gallery, token);
  }
}

async function loadUnitImages(layer, unit, samples, threshold, gallery, token) {
  const max = (state.run.limits && state.run.limits.max_images) || samples.length;
  const seeds = samples.slice(0, max);
  const status = el("p", { class: "muted", text: `regenerating ${seeds.length} images…` });
  gallery.append(status);
  const query = new URLSearchParams({ layer, unit: String(unit), threshold: String(threshold), samples: seeds.join(",") });
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
