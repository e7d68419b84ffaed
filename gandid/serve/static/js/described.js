// Reading the analyses' descriptions (GET /api/analyses; the contract is in docs/serve.md, "What an analysis
// shows"). Every view asks here; none of them knows an analysis by name.
import { isNumeric, show } from "./format.js";
import { layerInfo, state } from "./state.js";

const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
const list = (x) => (Array.isArray(x) ? x : []);

/** The analyses with a description, in run order: [{name, view}]. */
function described() {
  return state.analyses.filter((a) => isObject(a.view)).map((a) => ({ name: a.name, view: a.view }));
}

/** What each analysis shows of `layer`'s units: [{name, part}]. */
export function unitParts(layer) {
  return described().filter((a) => isObject(a.view.units) && isObject(a.view.units[layer]))
    .map((a) => ({ name: a.name, part: a.view.units[layer] }));
}

/** The notes of analyses that say why they show nothing of `layer` (their "absent"). */
export function absentNotes(layer) {
  return described().filter((a) => typeof a.view.absent === "string" && !(isObject(a.view.units) && isObject(a.view.units[layer])))
    .map((a) => a.view.absent);
}

/** The notes the analyses give for `layer`'s table: theirs where they show the layer, else their "absent". */
export function layerNotes(layer) {
  const notes = [];
  for (const { view } of described()) {
    const part = isObject(view.units) ? view.units[layer] : null;
    if (isObject(part)) {
      if (typeof part.note === "string") notes.push(part.note);
    } else if (typeof view.absent === "string") notes.push(view.absent);
  }
  return notes;
}

/** The Units table's columns for `layer` after the unit column, each keyed "analysis:key". */
export function unitColumns(layer) {
  const cols = [];
  for (const { name, part } of unitParts(layer)) {
    list(part.columns).forEach((col, i) => {
      if (!isObject(col)) return;
      cols.push({
        ...col, key: `${name}:${col.key ?? i}`, title: String(col.label ?? col.key ?? ""), num: isNumeric(col),
        values: list(col.values), tips: list(col.tips),
        tag: isObject(col.tag) ? { ...col.tag, units: new Set(list(col.tag.units)) } : null,
      });
    });
  }
  return cols;
}

/** The units the analyses flag at `layer` ({label, units: Set, highlight}), e.g. for "... only". */
export function unitFlags(layer) {
  return unitParts(layer).map(({ part }) => part.flag).filter(isObject)
    .map((f) => ({ label: String(f.label ?? ""), units: new Set(list(f.units)), highlight: Boolean(f.highlight) }));
}

/** How many units `layer` has. */
export function unitCount(layer) {
  const info = layerInfo(layer);
  if (info) return info.channels;
  return Math.max(0, ...unitColumns(layer).map((c) => c.values.length));
}

/** The unit page's sections for `layer`: [{name, section}] in run order. */
export function unitSections(layer) {
  return unitParts(layer).flatMap(({ name, part }) => list(part.sections).filter(isObject).map((section) => ({ name, section })));
}

/** A unit's headlines: its values in the columns the analyses name as "headline", formatted. */
export function unitHeadlines(layer, unit) {
  const out = [];
  for (const { name, part } of unitParts(layer)) {
    if (typeof part.headline !== "string") continue;
    const col = unitColumns(layer).find((c) => c.key === `${name}:${part.headline}`);
    const value = col ? col.values[unit] : null;
    if (value !== null && value !== undefined && value !== "") out.push(show(value, col));
  }
  return out;
}

/** Paint's unit sets, each with id "analysis.key"; the ones marked preferred first. */
export function unitSets() {
  const sets = [];
  for (const { name, view } of described()) {
    list(view.unit_sets).forEach((set, i) => {
      if (isObject(set) && isObject(set.layers)) sets.push({ ...set, id: `${name}.${set.key ?? i}`, analysis: name });
    });
  }
  return [...sets.filter((s) => s.preferred), ...sets.filter((s) => !s.preferred)];
}

/** The groups (e.g. one per class or label) a unit set offers at `layer`. */
export function groupsAt(set, layer) {
  const layers = Object.keys(set.layers);
  const at = set.fixed_layer ? layers[0] : layer;
  return list(set.layers[at]).filter((g) => isObject(g) && typeof g.name === "string");
}

/** The classes the analyses describe, in the order they first appear: [{name, parts: [{name, entry}]}]. */
export function describedClasses() {
  const classes = new Map();
  for (const { name, view } of described()) {
    const entries = isObject(view.classes) && isObject(view.classes.entries) ? view.classes.entries : {};
    for (const [cls, entry] of Object.entries(entries)) {
      if (!isObject(entry)) continue;
      if (!classes.has(cls)) classes.set(cls, []);
      classes.get(cls).push({ name, entry });
    }
  }
  return [...classes].map(([name, parts]) => ({ name, parts }));
}

/** The analyses that describe classes, with their notes: [{name, note, missing, entries}]. */
export function classAnalyses() {
  return described().filter((a) => isObject(a.view.classes)).map(({ name, view }) => ({
    name, note: view.classes.note, missing: view.classes.missing,
    entries: isObject(view.classes.entries) ? view.classes.entries : {},
  }));
}
