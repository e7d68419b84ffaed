// Paint's grid canvas: one cell per feature-map pixel, painted by mouse; the region of an edit.
import { $ } from "./dom.js";
import { state } from "./state.js";

export function setupGrid() {
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

export function drawGrid() {
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
export function paintRegion() {
  const { h, w, mask } = state.paint;
  if (!mask || !mask.some((v) => v)) return null;
  const rows = [];
  for (let y = 0; y < h; y++) rows.push(Array.from(mask.subarray(y * w, (y + 1) * w)));
  return rows;
}
