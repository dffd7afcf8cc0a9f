"use strict";
// The inventory page: counts (search, sort), intake (shelf photos: every product boxed), the review queue,
// changes by hand (sold, broken, received, recounted), the recent changes (audit log) and CSV export.
const statusLine = document.getElementById("status");
const REVIEW_PAGE = 50;  // the queue's oldest items shown; the rest come as these are decided

function setStatus(text, isError) {
  statusLine.textContent = text;
  statusLine.className = isError ? "error" : "";
}

// "2026-12-02 14:05" in the browser's time zone (the server stores UTC).
function localTime(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return iso || "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

function timeEl(iso) {
  const t = el("time", localTime(iso));
  t.dateTime = iso || "";
  return t;
}

// Product names: from /v1/products and from the counts (the server's titles; the page never guesses).
const titles = Object.create(null);  // no prototype: a product named "constructor" is a product, not a function
function titleOf(label) { return titles[label] || label; }

// The products a correction or a change by hand may name (the server refuses any other label, so a typo
// invents no product): the review's suggestions and the change form's choices.
const productIds = new Set();
async function loadLabels() {
  try {
    for (let offset = 0; ; offset += 1000) {
      const page = await (await api(`/v1/products?limit=1000&offset=${offset}`)).json();
      for (const p of page) {
        productIds.add(p.id);
        if (p.title) titles[p.id] = p.title;
      }
      if (page.length < 1000) break;
    }
  } catch (e) { /* no suggestions: the server still checks the label */ }
  fillProducts();
}

// What a person types for a product: its id, or its name as the page shows it (any case, spaces for dashes).
// None or several products of that name: sent as typed, and the service names the nearest ones.
function labelFor(text) {
  const typed = text.trim();
  if (!typed || productIds.has(typed)) return typed;
  const key = (s) => s.toLowerCase().replace(/[\s_-]+/g, " ").trim();
  const hits = [...productIds].filter((id) => key(id) === key(typed) || key(titleOf(id)) === key(typed));
  return hits.length === 1 ? hits[0] : typed;
}

function fillProducts() {
  const ids = [...productIds].sort((a, b) => titleOf(a).localeCompare(titleOf(b)) || a.localeCompare(b));
  document.getElementById("labels").replaceChildren(...ids.map((id) => {
    const o = el("option");
    o.value = id;
    if (titleOf(id) !== id) o.label = titleOf(id);
    return o;
  }));
  const select = document.getElementById("adjust-product");
  const chosen = select.value;
  const first = select.options[0];  // "choose a product…"
  select.replaceChildren(first, ...ids.map((id) => {
    const o = el("option", titleOf(id) === id ? id : `${titleOf(id)} (${id})`);
    o.value = id;
    return o;
  }));
  select.value = productIds.has(chosen) ? chosen : "";
  showCurrent();
}

// The counts table: every product with its name, count and last change; filtered by the search box and
// sorted by the column whose header was clicked last (again: the other way round).
let stock = [];  // {label, title, count, changed}
let sortKey = "name";
let sortDir = 1;
const search = document.getElementById("counts-search");
const byKey = {
  name: (a, b) => a.title.localeCompare(b.title, undefined, { sensitivity: "base" }),
  count: (a, b) => a.count - b.count,
  changed: (a, b) => (Date.parse(a.changed) || 0) - (Date.parse(b.changed) || 0),
};

function countRow(s) {
  const tr = el("tr");
  tr.dataset.label = s.label;
  const pick = el("button", s.title, "pick");
  pick.type = "button";
  pick.title = `Change the stock of ${s.title} by hand`;
  pick.addEventListener("click", () => chooseProduct(s.label));
  const product = el("td", null, "product");
  product.append(pick, el("span", s.label, "muted label-id"));
  const changed = el("td", null, "changed");
  changed.append(timeEl(s.changed));
  tr.append(changed, product, el("td", String(s.count), "num"));
  return tr;
}

function renderCounts() {
  const cmp = byKey[sortKey];
  const rows = [...stock].sort((a, b) => sortDir * cmp(a, b) || a.label.localeCompare(b.label));
  const needle = search.value.trim().toLowerCase();
  let shown = 0;
  const body = document.querySelector("#counts tbody");
  body.replaceChildren(...rows.map((s) => {
    const tr = countRow(s);
    tr.hidden = Boolean(needle) && !`${s.title}\n${s.label}`.toLowerCase().includes(needle);
    shown += !tr.hidden;
    return tr;
  }));
  if (!shown) {  // an empty table says why: nothing counted yet, or nothing the search matches
    const td = el("td", stock.length ? `No product matches "${search.value.trim()}".`
      : "Nothing counted yet: add photos above, or change stock by hand.", "muted");
    td.colSpan = 3;
    const tr = el("tr", null, "empty");
    tr.append(td);
    body.append(tr);
  }
  document.getElementById("counts-shown").textContent = needle ? `(${shown} of ${stock.length})` : "";
  for (const th of document.querySelectorAll("#counts th[data-sort]")) {
    if (th.dataset.sort === sortKey) th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
}

function sortBy(key) {
  sortDir = key === sortKey ? -sortDir : key === "name" ? 1 : -1;  // counts and times: biggest, newest first
  sortKey = key;
  renderCounts();
}

async function loadCounts() {
  const body = await (await api("/v1/inventory")).json();
  Object.assign(titles, body.titles);
  const missing = Object.keys(body.counts).filter((label) => !productIds.has(label));
  stock = Object.entries(body.counts).map(([label, count]) => ({
    label, count, title: titleOf(label), changed: (body.updated_at || {})[label] || "",
  }));
  renderCounts();
  const shown = body.review_queue > REVIEW_PAGE ? `, the oldest ${REVIEW_PAGE} shown` : "";
  document.getElementById("review-size").textContent = `(${body.review_queue}${shown})`;
  if (missing.length) {  // counted under a label /v1/products does not list: it may still be changed
    for (const label of missing) productIds.add(label);
    fillProducts();
  } else showCurrent();
}

// Changes by hand: sold and broken subtract, received adds, recounted sets the count (a stock take, which the
// audit log records as such). The reason ("sold: note") lands in the audit log, the API key's name as actor.
const adjustForm = document.getElementById("adjust");
const adjustProduct = document.getElementById("adjust-product");
const adjustKind = document.getElementById("adjust-kind");
const adjustQty = document.getElementById("adjust-qty");
const adjustNote = document.getElementById("adjust-note");

function showCurrent() {
  const label = adjustProduct.value;
  const row = stock.find((s) => s.label === label);
  document.getElementById("adjust-current").textContent = label ? `in stock: ${row ? row.count : 0}` : "";
}

function showKind() {
  const recount = adjustKind.value === "recounted";
  document.getElementById("adjust-qty-label").textContent = recount ? "New count" : "How many";
  adjustQty.min = recount ? "0" : "1";
}

function chooseProduct(label) {
  if (!productIds.has(label)) {
    productIds.add(label);
    fillProducts();
  }
  adjustProduct.value = label;
  showCurrent();
  adjustForm.scrollIntoView({ block: "nearest" });
  adjustQty.focus();
}

// The change form's own refusal, cleared once the form is edited (a value the browser itself then blocks, such as
// 0 sold, left it standing beside the browser's bubble). "Perhaps not changed" stays: it asks for a check first.
let adjustError = null;
function refuseChange(text) {
  setStatus(text, true);
  adjustError = text;
}

async function adjust(ev) {
  ev.preventDefault();
  const label = adjustProduct.value;
  const kind = adjustKind.value;
  const recount = kind === "recounted";
  const n = Number(adjustQty.value);
  if (!label) { refuseChange("Choose a product first."); return; }
  if (adjustQty.value.trim() === "" || !Number.isInteger(n) || n < (recount ? 0 : 1)) {
    refuseChange(recount ? "The new count is a whole number, 0 or more." : "How many: a whole number, 1 or more.");
    return;
  }
  const note = adjustNote.value.trim();
  const reason = note ? `${kind}: ${note}` : kind;
  const change = recount ? { count: n } : { delta: kind === "received" ? n : -n };
  const before = (stock.find((s) => s.label === label) || { count: 0 }).count;
  try {
    const body = await (await api(`/v1/inventory/products/${encodeURIComponent(label)}/adjust`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ...change, reason }),
    })).json();
    const verb = `${kind[0].toUpperCase()}${kind.slice(1)}`;
    const what = recount ? `${verb} ${titleOf(label)}` : `${verb} ${n} × ${titleOf(label)}`;
    setStatus(`${what}: now ${body.count} in stock (was ${recount ? before : body.count - change.delta}).`);
    adjustQty.value = "";
    adjustNote.value = "";
    await refresh();
  } catch (e) {  // a change by hand is not idempotent: with the answer lost, it may have been applied
    if (e.unreachable) {
      setStatus(`Perhaps not changed: ${UNREACHABLE}. Check the count (Refresh) before trying again.`, true);
    } else refuseChange(`Not changed: ${e.message}`);
  }
}

// Recent changes, newest first, from the audit log (it needs the API key).
function signed(n) { return n > 0 ? `+${n}` : String(n); }

function describe(a) {  // [change, reason]
  const d = a.detail || {};
  switch (a.action) {
    case "adjust":
      return [d.mode === "set" ? `set to ${a.count_after} (was ${a.count_after - a.delta})` : signed(a.delta),
        d.reason || "by hand"];
    case "intake": return [signed(a.delta), d.boxes ? "counted from a shelf photo" : "counted from a photo"];
    case "review_confirmed": return [signed(a.delta), "review: confirmed"];
    case "review_corrected": return [signed(a.delta), `review: corrected (the model said ${d.predicted ? titleOf(d.predicted) : "nothing"})`];
    case "review_rejected": return ["rejected", "review: not a product"];
    case "review_queued":
      return ["to review", `unsure${typeof d.confidence === "number" ? ` (${pct(d.confidence)})` : ""}`];
    default: return [a.delta ? signed(a.delta) : "", a.action];
  }
}

function auditRow(a) {
  const [change, reason] = describe(a);
  const tr = el("tr");
  tr.dataset.id = a.id;
  const when = el("td", null, "changed");
  when.append(timeEl(a.ts));
  tr.append(when, el("td", a.label ? titleOf(a.label) : "–"), el("td", change, "change"),
    el("td", a.count_after === null ? "" : String(a.count_after), "num"), el("td", reason, "reason"),
    el("td", a.actor, "muted"));
  return tr;
}

async function loadAudit() {
  const note = document.getElementById("audit-note");
  const tbody = document.querySelector("#audit tbody");
  if (!Object.keys(authHeaders()).length) {
    note.textContent = "Enter the API key (top right) to see the recent changes.";
    tbody.replaceChildren();
    return;
  }
  try {
    const rows = await (await api("/v1/inventory/audit?limit=50")).json();
    note.textContent = rows.length ? "" : "No changes yet.";
    tbody.replaceChildren(...rows.map(auditRow));
  } catch (e) {
    note.textContent = `Recent changes unavailable: ${e.message}`;
    tbody.replaceChildren();
  }
}

async function photoInto(img, id) {  // img.dataset.photo: loading, shown or failed (fetched again on a refresh)
  img.dataset.photo = "loading";
  try {
    showBlob(img, await (await api(`/v1/inventory/photos/${id}`)).blob());
    img.dataset.photo = "shown";
  } catch (e) {
    img.alt = e.status === 401 || e.status === 403 ? "photo needs an API key" : `photo unavailable: ${e.message}`;
    img.dataset.photo = "failed";
  }
}

async function decide(id, decision) {
  try {
    await api(`/v1/inventory/review/${id}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(decision),
    });
    setStatus(decision.reject ? "Rejected." : `Counted as ${titleOf(decision.label)}.`);
    await refresh();
  } catch (e) { setStatus(e.message, true); }
}

// The model's stored top candidates (a shelf box: its guess), each a one-click "count it as this".
function candidates(item) {
  const row = el("div", null, "candidates");
  for (const c of item.top_k || []) {
    const b = el("button", `${titleOf(c.label)} ${pct(c.p)}`, "candidate");
    b.type = "button";
    b.dataset.label = c.label;
    b.title = `Count it as ${titleOf(c.label)} (${c.label})`;
    b.addEventListener("click", () => decide(item.id, { label: c.label }));
    row.append(b);
  }
  return row;
}

// One queue item's card. Its photo, its correction box and its buttons are made once; syncCard brings the rest
// up to date on each refresh (the product names may arrive after the card; an uploader's erasure or the
// retention period takes the file name and photo away from an item that still waits).
function reviewCard(item) {
  const card = el("div", null, item.kind === "box" ? "review-item review-box" : "review-item");
  card.dataset.id = item.id;
  const img = el("img");
  const input = el("input");
  input.setAttribute("list", "labels");
  input.value = item.predicted_label ? titleOf(item.predicted_label) : "";  // a name as the page shows names
  input.className = "review-label";
  input.setAttribute("aria-label", "the product it is: its name or id");
  const ok = el("button", "Confirm / correct");
  ok.type = "button";
  ok.addEventListener("click", () => decide(item.id, { label: labelFor(input.value) }));
  const reject = el("button", "Reject", "reject");
  reject.type = "button";
  reject.title = "Not a product of the catalogue: nothing is counted";
  reject.addEventListener("click", () => decide(item.id, { reject: true }));
  const text = el("div");
  text.append(el("p", null, "review-source"), el("div", null, "review-model"), input, ok, reject);
  card.append(img, text);
  return card;
}

function syncCard(card, item) {
  const source = card.querySelector(".review-source");
  const what = item.kind === "box" ? `product ${item.index + 1} of ${item.source}` : item.source;
  if (source.textContent !== what) source.textContent = what;
  const img = card.querySelector("img");
  if (!item.has_photo) {
    img.removeAttribute("src");
    img.alt = item.source;
    delete img.dataset.photo;
  } else if (img.dataset.photo !== "shown" && img.dataset.photo !== "loading") {
    img.alt = item.source;
    photoInto(img, item.id);
  }
  modelLine(card, item);
}

function modelLine(card, item) {
  const names = [item.predicted_label, ...(item.top_k || []).map((c) => c.label)].map((l) => (l ? titleOf(l) : ""));
  if (card.dataset.names === names.join("\n")) return;  // unchanged: its buttons stay (and keep a keyboard's focus)
  card.dataset.names = names.join("\n");
  const guess = item.predicted_label ? `${titleOf(item.predicted_label)} (${pct(item.confidence)})` : "no guess";
  card.querySelector(".review-model").replaceChildren(el("p", `model: ${guess}`, "muted"), candidates(item));
}

let reviewSeq = 0;  // the latest loadReview: an earlier one's answer arriving after it is dropped

async function loadReview() {
  const mine = ++reviewSeq;
  const queue = document.getElementById("review");
  if (!Object.keys(authHeaders()).length) {  // the queue names the uploaders' files: it needs a key, as photos do
    queue.replaceChildren(el("p", "Enter the API key (top right) to review.", "muted"));
    return;
  }
  const items = await (await api(`/v1/inventory/review?limit=${REVIEW_PAGE}`)).json();
  if (mine !== reviewSeq) return;  // a later refresh asked since: its answer is the queue as it is now
  // A card still in the queue stays in the page as it is, never taken out and put back: a correction being
  // typed keeps its text, its focus and its caret through a refresh (another intake, a decision, the key
  // typed in), and its photo is not fetched again. Only cards of decided items go, and new ones come.
  const wanted = new Set(items.map((item) => item.id));
  const cards = new Map();
  for (const child of [...queue.children]) {
    if (child.classList.contains("review-item") && wanted.has(child.dataset.id)) cards.set(child.dataset.id, child);
    else child.remove();
  }
  if (!items.length) queue.append(el("p", "Nothing waiting for review.", "muted"));
  let before = null;  // the card placed last
  for (const item of items) {
    const card = cards.get(item.id) || reviewCard(item);
    syncCard(card, item);
    const next = before ? before.nextElementSibling : queue.firstElementChild;
    if (card !== next) queue.insertBefore(card, next);  // kept cards keep their order: only new ones move in
    before = card;
  }
}

async function refresh() {
  const failed = statusLine.className === "error" ? statusLine.textContent : null;  // an earlier failure's words
  try {
    await Promise.all([loadCounts(), loadReview(), loadAudit()]);
    if (failed !== null && statusLine.textContent === failed) setStatus("");  // it works now: the error is old news
  } catch (e) { setStatus(e.message, true); }
}

// A shelf photo with its boxes: divs over the <img>, placed in percent of the photo, so they follow the
// displayed size. The browser applies EXIF orientation as the server does, so the pixel grids agree.
function shelfFigure(file, shelf) {
  const figure = el("figure", null, "shelf-frame");
  const img = el("img");
  img.alt = file.name;
  showBlob(img, file);
  figure.append(img);
  for (const b of shelf.boxes) {
    const [x1, y1, x2, y2] = b.box;
    const div = el("div", null, b.status === "counted" ? "shelf-box" : "shelf-box review");
    // CSSOM, not a style attribute: the page's CSP forbids inline styles.
    div.style.left = `${(100 * x1) / shelf.width}%`;
    div.style.top = `${(100 * y1) / shelf.height}%`;
    div.style.width = `${(100 * (x2 - x1)) / shelf.width}%`;
    div.style.height = `${(100 * (y2 - y1)) / shelf.height}%`;
    div.title = `${titleOf(b.label)} ${pct(b.confidence)}`;
    // The label stays on the photo: above the box, or inside it at the photo's top edge (room for a label
    // above it on a photo shown 320 px wide); cut with "…" at the photo's right edge (its title: the full name).
    if (y1 * 320 < 18 * shelf.width) div.classList.add("label-inside");
    const span = el("span", titleOf(b.label));
    span.title = div.title;
    span.style.maxWidth = `${(100 * (shelf.width - x1)) / shelf.width}cqw`;  // cqw: of the photo's width
    div.append(span);
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
  const added = Object.create(null);
  let review = 0;
  for (const [, shelf] of shelves) {
    for (const [label, n] of Object.entries(shelf.counts)) added[label] = (added[label] || 0) + n;
    review += shelf.boxes.filter((b) => b.status !== "counted").length;
  }
  const rows = Object.entries(added).sort().map(([label, n]) => {
    const tr = el("tr");
    tr.dataset.label = label;
    tr.append(el("td", titleOf(label)), el("td", String(n), "num"));
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
let maxFiles = 32;  // photos per intake request (the service's --max-files): a larger choice goes in several
async function loadThresholds() {
  try {
    const info = await (await api("/v1/info")).json();
    reviewThreshold = info.thresholds.review;
    maxFiles = (info.limits && info.limits.max_files) || maxFiles;
  } catch (e) { /* unknown */ }
}

// One line for one file of an intake answer: what became of it.
function intakeLine(r, name) {
  if (r.status === "error") {  // the service's reason names the file, which the line already does
    return `refused: ${r.error.startsWith(`${name}: `) ? r.error.slice(name.length + 2) : r.error}`;
  }
  if (r.status === "duplicate") {
    return `duplicate: already in the inventory${r.label ? ` (as ${titleOf(r.label)}, ${r.previous_status})` : ""}`;
  }
  if (r.shelf) {
    const counted = Object.entries(r.shelf.counts).map(([label, n]) => `${n} × ${titleOf(label)}`).join(", ");
    const review = r.shelf.boxes.filter((b) => b.status !== "counted").length;
    return `shelf photo: counted ${counted || "nothing"}; ${review} unknown sent to review`;
  }
  if (r.status === "counted") return `counted as ${titleOf(r.label)} (now ${r.count})`;
  const below = reviewThreshold === null ? "too low" : `below the threshold ${pct(reviewThreshold)}`;
  const guess = r.label ? ` for ${titleOf(r.label)}` : "";
  return `sent to review: confidence ${pct(r.confidence)}${guess}, ${below}`;
}

function showIntake(files, results) {
  const items = results.map((r, i) => {
    const name = r.source || (files[i] && files[i].name) || `file ${i + 1}`;
    const li = el("li", null, r.status);
    li.append(el("strong", name), document.createTextNode(`: ${intakeLine(r, name)}`));
    return li;
  });
  document.getElementById("intake-files").replaceChildren(...items);
  document.getElementById("intake-report").hidden = !items.length;
}

// Intake answers added up: several requests of one intake, or the photos of a refused request sent one by one.
function noIntake() { return { results: [], counted: 0, review: 0, duplicate: 0, errors: 0 }; }
function addIntake(total, answer) {
  total.results.push(...answer.results);
  for (const key of ["counted", "review", "duplicate", "errors"]) total[key] += answer[key];
  return total;
}

// One request of an intake. Where every photo in it is refused (not an image, too large, empty), the service
// answers with the first one's reason alone: each is then sent by itself, to say every one's.
async function intakePart(part) {
  const form = new FormData();
  for (const f of part) form.append("images", f);
  try {
    return await (await api("/v1/inventory/intake", { method: "POST", body: form })).json();
  } catch (e) {
    if (![413, 415, 422].includes(e.status)) throw e;
    if (part.length > 1) {
      const total = noIntake();
      for (const f of part) addIntake(total, await intakePart([f]));
      return total;
    }
    const error = e.message.replace(/^\d+: /, "");
    return { ...noIntake(), results: [{ status: "error", error, source: part[0].name }], errors: 1 };
  }
}

let latestIntake = 0;  // the intake the page is showing: an answer to an older one that arrives late is dropped

async function intake(files) {
  if (!files.length) return;
  const mine = ++latestIntake;
  showIntake(files, []);
  document.getElementById("shelf").hidden = true;  // the last intake's boxes are not this one's
  if (reviewThreshold === null) await loadThresholds();  // the API key may have come since the page loaded
  // More photos than the service takes in one request go in several, one after the other (a phone's gallery
  // choice easily passes 32): each is its own transaction, and intake is idempotent by the photo's hash.
  const body = noIntake();
  try {
    for (let start = 0; start < files.length; start += maxFiles) {
      const part = files.slice(start, start + maxFiles);
      setStatus(files.length > maxFiles ? `Counting photos ${start + 1}-${start + part.length} of ${files.length}…`
        : `Counting ${files.length} photo(s)…`);
      const answer = await intakePart(part);
      if (mine !== latestIntake) return;
      addIntake(body, answer);
      showIntake(files.slice(0, body.results.length), body.results);
    }
    const shelf = showShelf(files, body.results);
    await refresh();  // first: a refresh that works clears an error line, and a refused photo's summary is one
    const photos = shelf ? `${shelf}; ` : `${body.counted} counted, ${body.review} for review, `;
    setStatus(`${photos}${body.duplicate} already seen, ${body.errors} refused.`, body.errors > 0);
  } catch (e) {
    if (mine !== latestIntake) return;
    const done = body.results.length ? `The first ${body.results.length} photo(s) were taken in (listed below). ` : "";
    if (body.results.length) await refresh();
    // Intake is idempotent by the photo's hash: sent again, a photo already counted is a duplicate, not counted twice.
    setStatus(done + (e.unreachable ? `${e.message} Re-sending the same photos is safe: photos already counted are `
      + "reported as duplicates." : e.message), true);
  }
}

async function exportCsv() {
  try {
    const blob = await (await api("/v1/inventory/export.csv")).blob();
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "inventory.csv";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 60_000);  // the download has its copy by then
  } catch (e) { setStatus(e.message, true); }
}

for (const id of ["intake-input", "intake-camera"]) {
  document.getElementById(id).addEventListener("change", (ev) => {
    const files = [...ev.target.files];
    ev.target.value = "";  // the same photo chosen again (after a refused intake) is a change again
    intake(files);
  });
}
document.getElementById("export").addEventListener("click", exportCsv);
document.getElementById("refresh").addEventListener("click", refresh);
search.addEventListener("input", renderCounts);
for (const th of document.querySelectorAll("#counts th[data-sort]")) {
  th.querySelector("button").addEventListener("click", () => sortBy(th.dataset.sort));
}
adjustForm.addEventListener("submit", adjust);
adjustForm.addEventListener("input", () => {
  if (adjustError !== null && statusLine.textContent === adjustError) setStatus("");
  adjustError = null;
});
adjustProduct.addEventListener("change", showCurrent);
adjustKind.addEventListener("change", showKind);
// The product names first, then what shows them (the review cards and the recent changes are drawn with the names
// known when they are drawn: loaded side by side, they showed the ids whenever the product list came last).
async function load() {
  await loadLabels();  // with --auth-reads the product list, too, needs the key
  await refresh();
}
document.getElementById("api-key").addEventListener("change", load);  // after common.js stored the key
showKind();
loadThresholds();
load();
