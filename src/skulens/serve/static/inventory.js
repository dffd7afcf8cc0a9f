"use strict";
// The inventory page: counts, intake, the review queue and CSV export.
const statusLine = document.getElementById("status");

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

async function loadLabels() {
  try {
    const info = await (await api("/v1/info")).json();
    document.getElementById("labels").replaceChildren(...info.model.classes.map((c) => {
      const o = el("option"); o.value = c; return o;
    }));
  } catch (e) { /* the free-text label still works */ }
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

async function photoInto(img, sha) {
  try {
    const blob = await (await api(`/v1/inventory/photos/${sha}`)).blob();
    img.src = URL.createObjectURL(blob);
  } catch (e) { img.alt = "photo needs an API key"; }
}

async function decide(sha, decision) {
  try {
    await api(`/v1/inventory/review/${sha}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(decision),
    });
    setStatus(decision.reject ? "Rejected." : `Counted as ${decision.label}.`);
    await refresh();
  } catch (e) { setStatus(e.message, true); }
}

async function loadReview() {
  const items = await (await api("/v1/inventory/review?limit=50")).json();
  document.getElementById("review").replaceChildren(...items.map((item) => {
    const card = el("div", null, "review-item");
    card.dataset.sha = item.sha256;
    const img = el("img");
    img.alt = item.source;
    if (item.has_photo) photoInto(img, item.sha256);
    const guess = item.predicted_label ? `${item.predicted_label} (${pct(item.confidence)})` : "no guess";
    const input = el("input");
    input.setAttribute("list", "labels");
    input.value = item.predicted_label || "";
    input.className = "review-label";
    const ok = el("button", "Confirm / correct");
    ok.type = "button";
    ok.addEventListener("click", () => decide(item.sha256, { label: input.value.trim() }));
    const reject = el("button", "Reject");
    reject.type = "button";
    reject.addEventListener("click", () => decide(item.sha256, { reject: true }));
    const text = el("div");
    text.append(el("p", item.source), el("p", `model: ${guess}`, "muted"), input, ok, reject);
    card.append(img, text);
    return card;
  }));
}

async function refresh() {
  try { await Promise.all([loadCounts(), loadReview()]); } catch (e) { setStatus(e.message, true); }
}

async function intake(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("images", f);
  setStatus(`Counting ${files.length} photo(s)…`);
  try {
    const body = await (await api("/v1/inventory/intake", { method: "POST", body: form })).json();
    setStatus(`${body.counted} counted, ${body.review} for review, ${body.duplicate} already seen, ` +
              `${body.errors} unreadable.`);
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
refresh();
