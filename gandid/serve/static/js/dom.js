// DOM helpers. Every string that comes from JSON goes into the page through textContent / setAttribute
// (el(), svg()), never through innerHTML: the descriptions come from plugins.
import { state } from "./state.js";

const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes (never parsed as HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  appendAll(node, children);
  return node;
}

/** An SVG element, same conventions as el(). */
export function svg(tag, attrs = {}, ...children) {
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
export function image(src, alt, cls = "pixelated") {
  const ok = typeof src === "string" && src.startsWith("data:image/png;base64,");
  return el("img", { class: cls, alt, src: ok ? src : null, title: alt });
}

export function figure(src, caption, cls, role) {
  const img = image(src, caption, cls);
  if (role) img.dataset.role = role;
  return el("figure", {}, img, el("figcaption", { text: caption }));
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** The colour swatch of a segmentation label (empty for a name the segmenter does not have). */
export function swatchFor(label) {
  const i = (state.run.labels || []).indexOf(label);
  const rgb = i >= 0 ? (state.run.colours || [])[i] : null;
  const swatch = el("span", { class: "swatch" });
  if (rgb) swatch.style.background = `rgb(${rgb.map(Number).join(",")})`;
  return swatch;
}

/** The link to a class's card in Classes. */
export function classHref(name) {
  return `#classes/${encodeURIComponent(name)}`;
}
