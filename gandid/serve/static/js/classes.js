// Classes: one card per class the analyses describe, each analysis adding its badge, facts, charts, paint
// actions and blocks in run order; then the run's plots.
import { factLine, factList, table } from "./blocks.js";
import { curve, histogram } from "./charts.js";
import { classAnalyses, describedClasses } from "./described.js";
import { $, classHref, clear, el, swatchFor } from "./dom.js";
import { presetSet } from "./paint.js";
import { state } from "./state.js";

const TONES = new Set(["good", "bad", "warn", "neutral"]);
const CHARTS = { histogram, curve };

export function renderClasses() {
  if (state.classesRendered) return;
  state.classesRendered = true;
  const body = clear($("classes-body"));
  const index = clear($("classes-index"));
  const classes = describedClasses();
  if (!classes.length) {
    body.append(el("p", { class: "muted", text: "No analysis of this run describes classes, so there is no per-class view." }));
    return;
  }
  const notes = classAnalyses().map((a) => a.note).filter((n) => typeof n === "string" && n);
  if (notes.length) index.append(el("span", { class: "muted", text: `${notes.join(" · ")} ` }));
  for (const { name, parts } of classes) {
    index.append(el("a", { href: classHref(name), text: name }));
    body.append(classCard(name, parts));
  }
  const files = Array.isArray(state.run.files) ? state.run.files.filter((f) => /\.png$/i.test(f)) : [];
  if (files.length) body.append(runPlots(files));
}

function badge(spec) {
  if (!spec || typeof spec.text !== "string") return null;
  const tone = TONES.has(spec.tone) ? spec.tone : "neutral";
  return el("span", { class: `call tone-${tone}`, text: spec.text, title: spec.tip ?? null });
}

function block(b) {
  if (b.kind === "table") {
    const summary = factLine(b.summary);
    return el("div", { class: "block block-table" }, b.title ? el("h3", { text: b.title }) : null,
      summary ? el("p", { class: "muted small", text: summary }) : null, table(b, undefined, "data compact"));
  }
  if (b.kind === "facts") {
    return el("div", { class: "block block-facts" }, b.title ? el("h3", { text: b.title }) : null, factList(b.rows, undefined, "facts wide"));
  }
  if (b.kind === "text") return el("p", { class: "muted small", text: b.text ?? "" });
  return null;
}

function classCard(cls, parts) {
  const blocks = parts.flatMap(({ name, entry }) => (Array.isArray(entry.blocks) ? entry.blocks : [])
    .filter((b) => b && typeof b === "object").map((b) => ({ name, b })));
  const facts = parts.map(({ entry }) => factLine(entry.facts)).filter(Boolean).join(" · ");
  const charts = blocks.filter(({ b }) => b.kind in CHARTS).map(({ b }) => el("figure", {}, CHARTS[b.kind](b),
    el("figcaption", { text: b.caption ?? "" })));
  const actions = blocks.filter(({ b }) => b.kind === "paint").map(({ name, b }) => el("a", {
    class: "button", href: "#paint", text: b.text ?? "paint",
    onclick: () => presetSet(`${name}.${b.set}`, b.group, b.k),
  }));
  // the others in run order, with the note of each analysis that describes classes but not this one
  const have = new Set(parts.map((p) => p.name));
  const rest = [];
  for (const a of classAnalyses()) {
    if (!have.has(a.name)) {
      if (typeof a.missing === "string") rest.push(el("p", { class: "muted small", text: a.missing }));
      continue;
    }
    for (const { name, b } of blocks) if (name === a.name) rest.push(block(b));
  }
  return el("section", { class: "class-card panel", id: `class-${cls}` },
    el("h2", {}, swatchFor(cls), cls, parts.map(({ entry }) => badge(entry.badge))),
    facts ? el("p", { class: "muted small", text: facts }) : null,
    charts.length ? el("div", { class: "charts" }, charts) : null,
    actions.length ? el("div", { class: "actions" }, actions) : null,
    el("div", { class: "row" }, rest.filter(Boolean)),
  );
}

function runPlots(files) {
  return el("details", { class: "panel" }, el("summary", { text: `The run's plots (${files.length})` }),
    el("div", { class: "plots" }, files.map((name) => el("figure", {},
      el("img", { src: `/files/${encodeURIComponent(name)}`, alt: name, loading: "lazy" }), el("figcaption", { text: name })))));
}
