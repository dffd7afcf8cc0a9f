"use strict";
// The recognise page: photo in, top-k with confidence bars, coarse class, attributes, support answer, similar.
const statusLine = document.getElementById("status");
let features = {};

api("/v1/info").then((r) => r.json()).then((info) => { features = info.features; }).catch(() => {});

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

function renderPrediction(body, file) {
  const p = body.prediction;
  document.getElementById("result").hidden = false;
  document.getElementById("preview").src = URL.createObjectURL(file);
  document.getElementById("top-label").textContent = p.label === null ? "not sure" : p.label;
  document.getElementById("top-title").textContent =
    `${body.product ? body.product.title : ""} (${p.level}, ${pct(p.confidence)})`;
  document.getElementById("coarse").textContent =
    p.coarse_label ? `${p.coarse_label} (${pct(p.coarse_confidence)})` : "n/a";
  const attrs = document.getElementById("attributes");
  attrs.replaceChildren(...(Object.keys(p.attributes).length
    ? Object.entries(p.attributes).map(([a, v]) => el("span", `${a} ${pct(v)}`, "chip"))
    : [el("span", "none", "muted")]));
  const list = document.getElementById("topk");
  list.replaceChildren(...p.top_k.map((row) => {
    const li = el("li", null, "bar-row");
    li.append(el("span", row.label, "bar-label"));
    const track = el("span", null, "bar-track");
    const fill = el("span", null, "bar-fill");
    fill.style.width = pct(row.p);
    track.append(fill);
    li.append(track, el("span", pct(row.p), "bar-value"));
    return li;
  }));
}

function renderSupport(s) {
  document.getElementById("support-answer").textContent =
    s.handoff ? `Handed off to a person: ${s.reason}` : s.answer;
  document.getElementById("support-meta").textContent =
    s.handoff ? "" : `from the product's ${s.field} (match ${s.score.toFixed(2)})`;
}

async function renderSimilar(label) {
  const section = document.getElementById("similar-section");
  section.hidden = true;
  if (!label || !(features.search || features.recommendations)) return;
  try {
    const hits = await (await api(`/v1/products/${encodeURIComponent(label)}/similar?k=8`)).json();
    const gallery = document.getElementById("similar");
    gallery.replaceChildren(...hits.map((h) => {
      const fig = el("figure");
      const img = el("img");
      img.alt = h.title || h.product_id;
      img.loading = "lazy";
      img.src = `/v1/products/${encodeURIComponent(h.product_id)}/image`;
      fig.append(img, el("figcaption", `${h.title || h.product_id} (${h.score.toFixed(2)})`));
      return fig;
    }));
    section.hidden = hits.length === 0;
  } catch (e) { /* similar products are a nicety: the prediction already shows */ }
}

async function recognise(file) {
  if (!file) return;
  setStatus(`Recognising ${file.name}…`);
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", "5");
  const ask = new FormData();
  ask.append("image", file);
  const question = document.getElementById("question").value.trim();
  if (question) ask.append("question", question);
  try {
    const [pred, support] = await Promise.all([
      api("/v1/predict", { method: "POST", body: form }).then((r) => r.json()),
      api("/v1/support/ask", { method: "POST", body: ask }).then((r) => r.json()).catch((e) => ({ error: e })),
    ]);
    renderPrediction(pred, file);
    if (support.error) {
      document.getElementById("support-answer").textContent = `No answer: ${support.error.message}`;
    } else {
      renderSupport(support);
    }
    setStatus(`Done in ${pred.timing_ms.toFixed(0)} ms.`);
    renderSimilar(pred.prediction.fine_label);
  } catch (e) {
    setStatus(e.message, true);
  }
}

for (const id of ["file-input", "camera-input"]) {
  document.getElementById(id).addEventListener("change", (ev) => recognise(ev.target.files[0]));
}
const zone = document.getElementById("drop-zone");
zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (ev) => {
  ev.preventDefault();
  zone.classList.remove("over");
  recognise(ev.dataTransfer.files[0]);
});
