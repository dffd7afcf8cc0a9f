"use strict";
// The recognise page: photo in, top-k with confidence bars, coarse class, attributes, support answer, similar.
// Below the service's min_confidence the page names no product: it says "not sure" and shows the candidates.
// People read names, not keys: the server's title ("Oatly Oat Milk"), else the key with dashes as spaces.
const statusLine = document.getElementById("status");
let info = null;
let latest = 0;  // the upload the page is showing: an answer to an older one that arrives late is dropped
let photo = null;  // the last photo chosen: a question typed after it is asked about it
let sure = false;  // whether the page named a product for that photo (a hand-off then says "not sure")
let answered = null;  // the question the answer on screen answers (null: none on screen)
let asking = 0;  // the question the page waits for: an answer to an older one that arrives late is dropped
const questionInput = document.getElementById("question");

async function loadInfo() {
  if (!info) {
    try { info = await (await api("/v1/info")).json(); } catch (e) { /* tried again with the next photo */ }
  }
  return info;
}
loadInfo();

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

// Nothing of the previous photo stays on screen while a new one is recognised, nor after it fails.
function clearResult() {
  document.getElementById("result").hidden = true;
  const preview = document.getElementById("preview");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  for (const id of ["top-label", "top-title", "coarse", "support-answer", "support-meta"]) {
    document.getElementById(id).textContent = "";
  }
  for (const id of ["attributes", "topk", "similar"]) document.getElementById(id).replaceChildren();
  document.getElementById("similar-section").hidden = true;
  answered = null;
  markStale();
}

function question() { return questionInput.value.trim(); }

// An answer on screen answers the question it was asked with: once the question is changed, it is marked as the
// earlier question's answer until the new one is asked.
function markStale() {
  const stale = answered !== null && question() !== answered;
  document.getElementById("support").classList.toggle("stale", stale);
  document.getElementById("support-stale").hidden = !stale;
}

function showAnswer(support, asked) {
  if (support.error) {
    document.getElementById("support-answer").textContent = `No answer: ${support.error.message}`;
    document.getElementById("support-meta").textContent = "";
  } else {
    renderSupport(support, sure);
  }
  answered = asked;
  markStale();
}

function askForm(file, asked) {
  const form = new FormData();
  form.append("image", file);
  if (asked) form.append("question", asked);
  return form;
}

// A label as words: "Oatly-Oat-Milk" -> "Oatly Oat Milk" (for when the server sends no title).
function words(label) { return String(label).replace(/-/g, " "); }

// An attribute as words: a flag "lactose_free" -> "lactose free", a group value "colour=white" -> "colour: white".
function attributeWords(attribute) {
  const [group, ...value] = attribute.split("=");
  const plain = (s) => s.replace(/_/g, " ");
  return value.length ? `${plain(group)}: ${plain(value.join("="))}` : plain(group);
}

// "fine": the service named a product at or above its threshold; "coarse" and "unknown" name none.
function isSure(prediction) { return prediction.level === "fine" && prediction.label !== null; }

function renderPrediction(body, file) {
  const p = body.prediction;
  const sure = isSure(p);
  document.getElementById("result").hidden = false;
  document.getElementById("preview").src = URL.createObjectURL(file);
  const name = p.title || (body.product && body.product.title) || words(p.label);
  document.getElementById("top-label").textContent = sure ? name : "not sure";
  document.getElementById("top-title").textContent = sure
    ? `Confidence: ${pct(p.confidence)}`
    : "Not sure which product this is: the likeliest are below. Another photo, of the front or the label, may "
      + "settle it.";
  document.getElementById("coarse").textContent =
    p.coarse_label ? `${words(p.coarse_label)} (${pct(p.coarse_confidence)})` : "n/a";
  const attrs = document.getElementById("attributes");
  // Attributes describe the product: without a product decision they would claim a certainty it lacks.
  attrs.replaceChildren(...(!sure ? [el("span", "not sure (no product recognised)", "muted")]
    : Object.keys(p.attributes).length
      ? Object.entries(p.attributes).map(([a, v]) => el("span", `${attributeWords(a)} (${pct(v)})`, "chip"))
      : [el("span", "none", "muted")]));
  const list = document.getElementById("topk");
  list.replaceChildren(...p.top_k.map((row) => {
    const li = el("li", null, "bar-row");
    li.dataset.label = row.label;  // the key, for scripts; people read the name
    li.append(el("span", row.title || words(row.label), "bar-label"));
    const track = el("span", null, "bar-track");
    const fill = el("span", null, "bar-fill");
    fill.style.width = pct(row.p);
    track.append(fill);
    li.append(track, el("span", pct(row.p), "bar-value"));
    return li;
  }));
}

function renderSupport(s, sure) {
  let answer = s.answer;
  if (s.handoff) {  // a recognition below the threshold hands off with the page's own words and numbers
    answer = `Handed off to a person: ${!sure && s.product ? "not sure which product this is" : s.reason}`;
  }
  document.getElementById("support-answer").textContent = answer;
  let meta = "";
  if (!s.handoff) {  // a structured answer is a fact, not a text match: say where it came from, not a score
    meta = s.source === "text" ? `from the product's ${s.field} (match ${pct(s.score)})`
      : s.source === "photo" ? "from what the photo shows (the catalogue does not record it)"
      : "from the product's catalogue facts";
  }
  document.getElementById("support-meta").textContent = meta;
}

async function renderSimilar(label, mine) {
  const section = document.getElementById("similar-section");
  section.hidden = true;
  const features = (info && info.features) || {};
  if (!label || !(features.search || features.recommendations)) return;
  try {
    const hits = await (await api(`/v1/products/${encodeURIComponent(label)}/similar?k=8`)).json();
    if (mine !== latest) return;
    const gallery = document.getElementById("similar");
    gallery.replaceChildren(...hits.map((h) => {
      const fig = el("figure");
      const img = el("img");
      img.alt = h.title || words(h.product_id);
      if (h.has_image) {  // fetched with the API key; a product without a photo shows its name only
        api(`/v1/products/${encodeURIComponent(h.product_id)}/image`)
          .then((r) => r.blob()).then((b) => showBlob(img, b)).catch(() => { img.alt += " (no photo)"; });
        fig.append(img);
      }
      fig.append(el("figcaption", `${h.title || words(h.product_id)} (${pct(h.score)})`));
      return fig;
    }));
    section.hidden = hits.length === 0;
  } catch (e) { /* similar products are a nicety: the prediction already shows */ }
}

async function recognise(file) {
  if (!file) return;
  const mine = ++latest;
  const turn = ++asking;
  photo = file;
  clearResult();
  setStatus(`Recognising ${file.name}…`);
  const started = performance.now();  // the wait as the user sees it: upload, queue, model and answer
  const threshold = (await loadInfo())?.thresholds?.min_confidence;
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", "5");
  if (threshold !== undefined) form.append("min_confidence", String(threshold));
  const asked = question();
  try {
    const [pred, support] = await Promise.all([
      api("/v1/predict", { method: "POST", body: form }).then((r) => r.json()),
      api("/v1/support/ask", { method: "POST", body: askForm(file, asked) }).then((r) => r.json())
        .catch((e) => ({ error: e })),
    ]);
    if (mine !== latest) return;
    renderPrediction(pred, file);
    sure = isSure(pred.prediction);
    if (turn === asking) showAnswer(support, asked);
    setStatus(`Done in ${(performance.now() - started).toFixed(0)} ms (the model: ${pred.timing_ms.toFixed(0)} ms).`);
    // products like the one it named; none for a photo it is not sure of (they would be like a declined guess)
    if (isSure(pred.prediction)) renderSimilar(pred.prediction.label, mine);
  } catch (e) {
    if (mine !== latest) return;
    photo = null;  // nothing on screen to ask about
    clearResult();
    setStatus(e.message, true);
  }
}

// A question typed after the photo (Enter, or Ask): the same question request as recognise() makes, for that photo.
async function askAgain() {
  if (!photo) {
    setStatus("Choose or take a photo first: the question is asked about it.", true);
    return;
  }
  if (document.getElementById("result").hidden) {  // still recognising: start over, with this question
    recognise(photo);
    return;
  }
  const mine = latest;
  const turn = ++asking;
  const asked = question();
  setStatus(asked ? "Asking…" : "Asking (no question: the product's summary)…");
  try {
    const support = await (await api("/v1/support/ask", { method: "POST", body: askForm(photo, asked) })).json();
    if (mine !== latest || turn !== asking) return;
    showAnswer(support, asked);
    setStatus("Answered.");
  } catch (e) {
    if (mine !== latest || turn !== asking) return;
    showAnswer({ error: e }, asked);
    setStatus(e.message, true);
  }
}

questionInput.addEventListener("input", markStale);
questionInput.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.isComposing) {
    ev.preventDefault();
    askAgain();
  }
});
document.getElementById("ask").addEventListener("click", askAgain);

for (const id of ["file-input", "camera-input"]) {
  document.getElementById(id).addEventListener("change", (ev) => {
    const file = ev.target.files[0];
    ev.target.value = "";  // choosing the same file again (after fixing it, say) is a new upload
    recognise(file);
  });
}
const zone = document.getElementById("drop-zone");
zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (ev) => {
  ev.preventDefault();
  zone.classList.remove("over");
  recognise(ev.dataTransfer.files[0]);
});
// The drop zone is focusable: Enter or Space on it opens the file chooser (keys in the question box are its own).
zone.addEventListener("keydown", (ev) => {
  if (ev.target === zone && (ev.key === "Enter" || ev.key === " ")) {
    ev.preventDefault();
    document.getElementById("file-input").click();
  }
});
