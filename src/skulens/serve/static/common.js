"use strict";
// Shared by the pages: the API key (kept in this browser only) and fetch helpers. No innerHTML with data.
const keyInput = document.getElementById("api-key");
if (keyInput) {
  keyInput.value = localStorage.getItem("skulens-api-key") || "";
  keyInput.addEventListener("change", () => localStorage.setItem("skulens-api-key", keyInput.value.trim()));
}

function authHeaders() {
  const key = (localStorage.getItem("skulens-api-key") || "").trim();
  return key ? { "X-API-Key": key } : {};
}

// A lost service (stopped, no network) rejects fetch() with the browser's bare "Failed to fetch": it becomes words,
// marked `unreachable` so that a caller can say whether sending again is safe.
const UNREACHABLE = "the service cannot be reached (is it running?): nothing was sent, or the answer was lost";

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    const lost = new Error(`${UNREACHABLE}. Try again.`);
    lost.unreachable = true;
    throw lost;
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    if (response.status === 401) {  // the service's words are for API clients ("send it as 'X-API-Key: KEY'")
      detail = authHeaders()["X-API-Key"]
        ? "the API key in the box at the top right was refused: correct it (or clear it where none is needed)"
        : "this needs an API key: enter it in the box at the top right";
    }
    const failed = new Error(`${response.status}: ${detail}`);
    failed.status = response.status;
    throw failed;
  }
  return response;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function pct(p) { return `${(100 * p).toFixed(1)}%`; }

// A photo fetched with the page's API key (an <img src> sends none: with --auth-reads it would be a 401). An object
// URL holds its photo in memory until revoked: once the image has loaded, it is no longer needed.
function showBlob(img, blob) {
  const url = URL.createObjectURL(blob);
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  img.src = url;
}
