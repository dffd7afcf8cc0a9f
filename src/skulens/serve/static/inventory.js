"use strict";
// The inventory page: counts, intake (shelf photos: every product boxed), the review queue and CSV export.
const statusLine = document.getElementById("status");

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

// The products a correction may name (the server refuses any other label, so a typo invents no product).
async function loadLabels() {
  const options = [];
  try {
    for (let offset = 0; ; offset += 1000) {
      const page = await (await api(`/v1/products?limit=1000&offset=${offset}`)).json();
      for (const p of page) {
        const o = el("option");
        o.value = p.id;
        if (p.title && p.title !== p.id) o.label = p.title;
        options.push(o);
      }
      if (page.length < 1000) break;
    }
  } catch (e) { /* no suggestions: the server still checks the label */ }
  document.getElementById("labels").replaceChildren(...options);
}

async function loadCounts() {
  const body = await (await api("/v1/inventory")).json();
  const rows = Object.entries(body.counts).map(([label, count]) => {
    const tr = el("tr");
    tr.append(el("td", body.titles[label] || label), el("td", label, "muted"), el("td", String(count), "num"));
    return tr;
  });
  document.querySelector("#counts tbody").replaceChildren(...rows);
  document.getElementById("review-size").textContent = `(${body.review_queue})`;
}

async function photoInto(img, id) {
  try {
    const blob = await (await api(`/v1/inventory/photos/${id}`)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { img.alt = "photo needs an API key"; }
}

async function decide(id, decision) {
  try {
    await api(`/v1/inventory/review/${id}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(decision),
    });
    setStatus(decision.reject ? "Rejected." : `Counted as ${decision.label}.`);
    await refresh();
  } catch (e) { setStatus(e.message, true); }
}

// The model's stored top candidates (a shelf box: its guess), each a one-click "count it as this".
function candidates(item) {
  const row = el("div", null, "candidates");
  for (const c of item.top_k || []) {
    const b = el("button", `${c.label} ${pct(c.p)}`, "candidate");
    b.type = "button";
    b.title = `Count it as ${c.label}`;
    b.addEventListener("click", () => decide(item.id, { label: c.label }));
    row.append(b);
  }
  return row;
}

async function loadReview() {
  const items = await (await api("/v1/inventory/review?limit=50")).json();
  document.getElementById("review").replaceChildren(...items.map((item) => {
    const card = el("div", null, item.kind === "box" ? "review-item review-box" : "review-item");
    card.dataset.id = item.id;
    const img = el("img");
    img.alt = item.source;
    if (item.has_photo) photoInto(img, item.id);
    const guess = item.predicted_label ? `${item.predicted_label} (${pct(item.confidence)})` : "no guess";
    const input = el("input");
    input.setAttribute("list", "labels");
    input.value = item.predicted_label || "";
    input.className = "review-label";
    const ok = el("button", "Confirm / correct");
    ok.type = "button";
    ok.addEventListener("click", () => decide(item.id, { label: input.value.trim() }));
    const reject = el("button", "Reject");
    reject.type = "button";
    reject.addEventListener("click", () => decide(item.id, { reject: true }));
    const text = el("div");
    const what = item.kind === "box" ? `product ${item.index + 1} of ${item.source}` : item.source;
    text.append(el("p", what), el("p", `model: ${guess}`, "muted"), candidates(item), input, ok, reject);
    card.append(img, text);
    return card;
  }));
}

async function refresh() {
  try { await Promise.all([loadCounts(), loadReview()]); } catch (e) { setStatus(e.message, true); }
}

// A shelf photo with its boxes: divs over the <img>, placed in percent of the photo, so they follow the
// displayed size. The browser applies EXIF orientation as the server does, so the pixel grids agree.
function shelfFigure(file, shelf) {
  const figure = el("figure", null, "shelf-frame");
  const img = el("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  figure.append(img);
  for (const b of shelf.boxes) {
    const [x1, y1, x2, y2] = b.box;
    const div = el("div", null, b.status === "counted" ? "shelf-box" : "shelf-box review");
    // CSSOM, not a style attribute: the page's CSP forbids inline styles.
    div.style.left = `${(100 * x1) / shelf.width}%`;
    div.style.top = `${(100 * y1) / shelf.height}%`;
    div.style.width = `${(100 * (x2 - x1)) / shelf.width}%`;
    div.style.height = `${(100 * (y2 - y1)) / shelf.height}%`;
    div.title = `${b.label} ${pct(b.confidence)}`;
    div.append(el("span", b.label));
    figure.append(div);
  }
  return figure;
}

// Shows the shelf photos of an intake answer; returns a status line for them ("" when there are none).
function showShelf(files, results) {
  const shelves = results.map((r, i) => [files[i], r.shelf]).filter(([, shelf]) => shelf);
  document.getElementById("shelf").hidden = !shelves.length;
  if (!shelves.length) return "";
  document.getElementById("shelf-photos").replaceChildren(...shelves.map(([f, shelf]) => shelfFigure(f, shelf)));
  const added = {};
  let review = 0;
  for (const [, shelf] of shelves) {
    for (const [label, n] of Object.entries(shelf.counts)) added[label] = (added[label] || 0) + n;
    review += shelf.boxes.filter((b) => b.status !== "counted").length;
  }
  const rows = Object.entries(added).sort().map(([label, n]) => {
    const tr = el("tr");
    tr.append(el("td", label), el("td", String(n), "num"));
    return tr;
  });
  if (review) {
    const tr = el("tr", null, "muted");
    tr.append(el("td", "unknown (sent to review)"), el("td", String(review), "num"));
    rows.push(tr);
  }
  document.querySelector("#shelf-counts tbody").replaceChildren(...rows);
  const products = Object.values(added).reduce((a, b) => a + b, 0);
  return `${shelves.length} shelf photo(s): ${products} products counted, ${review} unknown sent to review`;
}

// The review threshold, for saying why a photo went to review (null: unknown, say only its confidence).
let reviewThreshold = null;
async function loadThresholds() {
  try { reviewThreshold = (await (await api("/v1/info")).json()).thresholds.review; } catch (e) { /* unknown */ }
}

// One line for one file of an intake answer: what became of it.
function intakeLine(r) {
  if (r.status === "error") return `error: ${r.error}`;
  if (r.status === "duplicate") {
    return `duplicate: already in the inventory${r.label ? ` (as ${r.label}, ${r.previous_status})` : ""}`;
  }
  if (r.shelf) {
    const counted = Object.entries(r.shelf.counts).map(([label, n]) => `${n} × ${label}`).join(", ");
    const review = r.shelf.boxes.filter((b) => b.status !== "counted").length;
    return `shelf photo: counted ${counted || "nothing"}; ${review} unknown sent to review`;
  }
  if (r.status === "counted") return `counted as ${r.label} (now ${r.count})`;
  const below = reviewThreshold === null ? "too low" : `below the threshold ${pct(reviewThreshold)}`;
  const guess = r.label ? ` for ${r.label}` : "";
  return `sent to review: confidence ${pct(r.confidence)}${guess}, ${below}`;
}

function showIntake(files, results) {
  const items = results.map((r, i) => {
    const name = r.source || (files[i] && files[i].name) || `file ${i + 1}`;
    const li = el("li", null, r.status);
    li.append(el("strong", name), document.createTextNode(`: ${intakeLine(r)}`));
    return li;
  });
  document.getElementById("intake-files").replaceChildren(...items);
  document.getElementById("intake-report").hidden = !items.length;
}

async function intake(files) {
  if (!files.length) return;
  showIntake(files, []);
  if (reviewThreshold === null) await loadThresholds();  // the API key may have come since the page loaded
  const form = new FormData();
  for (const f of files) form.append("images", f);
  setStatus(`Counting ${files.length} photo(s)…`);
  try {
    const body = await (await api("/v1/inventory/intake", { method: "POST", body: form })).json();
    showIntake(files, body.results);
    const shelf = showShelf(files, body.results);
    const photos = shelf ? `${shelf}; ` : `${body.counted} counted, ${body.review} for review, `;
    setStatus(`${photos}${body.duplicate} already seen, ${body.errors} unreadable.`);
    await refresh();
  } catch (e) { setStatus(e.message, true); }
}

async function exportCsv() {
  try {
    const blob = await (await api("/v1/inventory/export.csv")).blob();
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "inventory.csv";
    a.click();
  } catch (e) { setStatus(e.message, true); }
}

for (const id of ["intake-input", "intake-camera"]) {
  document.getElementById(id).addEventListener("change", (ev) => intake([...ev.target.files]));
}
document.getElementById("export").addEventListener("click", exportCsv);
document.getElementById("refresh").addEventListener("click", refresh);
loadLabels();
loadThresholds();
refresh();
