// The JSON API (docs/serve.md) and the message area that reports its errors.
import { $, clear, el } from "./dom.js";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** GET path, or POST body as JSON; the JSON answer, or an ApiError with the server's message. */
export async function api(path, body) {
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

export function showMessage(text, kind = "error") {
  const box = $("messages");
  const last = box.lastElementChild;
  if (last && last.firstElementChild.textContent === text) return; // the same message again: keep one
  const close = el("button", { type: "button", class: "close", "aria-label": "dismiss", text: "×" });
  const msg = el("div", { class: `message ${kind}` }, el("span", { text }), close);
  close.addEventListener("click", () => msg.remove());
  box.append(msg);
  while (box.children.length > 4) box.firstElementChild.remove(); // keep the latest few
}

export function clearMessages() {
  clear($("messages"));
}
