// The explorer's shared state. main.js also sets window.state to it (the browser tests read it).

export const state = {
  run: null, // GET /api/run
  analyses: [], // GET /api/analyses: [{name, status, result, view, error}] in run order
  units: { layer: null, sortKey: "unit", sortDir: 1, rows: [] },
  unitPageToken: 0, // a unit page whose images arrive after the user moved on is dropped
  classesRendered: false,
  pendingSample: null, // a sample chosen on a unit page, taken by Paint when it opens
  paint: { mask: null, h: 0, w: 0, stroke: null, busy: false, sampleToken: 0, layer: null },
};

/** A layer of the generator by name ({name, channels, size}), or null. */
export function layerInfo(name) {
  return (state.run.layers || []).find((l) => l.name === name) || null;
}
