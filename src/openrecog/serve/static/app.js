// The openrecog page: recognise an image, manage the gallery. Plain JS, no build step.
// States a browser test can wait for: #result[data-state] and #register-status[data-state]
// go idle → loading → done | error; #classes-status likewise.
"use strict";

const KEY_STORAGE = "openrecog.apiKey";
const $ = (id) => document.getElementById(id);
let thumbnailUrls = [];

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// Relative paths, so the page also works behind a reverse proxy under a prefix.
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, { ...options, headers });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await response.json() : null;
  if (!response.ok) {
    let detail = response.statusText || `HTTP ${response.status}`;
    if (body && typeof body.detail === "string") detail = body.detail;
    else if (body && body.detail) detail = JSON.stringify(body.detail);
    if (response.status === 401) detail += " (enter the API key at the top)";
    throw new ApiError(response.status, detail);
  }
  return body;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function setState(element, state, text) {
  element.dataset.state = state;
  if (text !== undefined) element.textContent = text;
}

// ---------------------------------------------------------------- health
async function loadHealth() {
  const health = $("health");
  try {
    const h = await api("health");
    const model = h.model.backbone || h.model.type;
    health.textContent =
      `${h.items} items · ${h.classes} classes · ${model} (${h.model.embedding_dim}-d) · ` +
      `engine ${h.engine} · threshold ${h.threshold.toFixed(2)} · writes: ${h.writes}`;
    health.dataset.state = "done";
    health.dataset.writes = h.writes;
    if (h.writes === "disabled") {
      setState($("register-status"), "idle",
        "Writes are disabled: this server was started without an API key.");
      $("register-submit").disabled = true;
    }
  } catch (error) {
    setState(health, "error", `service unavailable: ${error.message}`);
  }
}

// ---------------------------------------------------------------- recognise
function clearMatches() {
  for (const url of thumbnailUrls) URL.revokeObjectURL(url);
  thumbnailUrls = [];
  $("matches").replaceChildren();
}

// Thumbnails are fetched (not <img src>) so that the API key header goes with them.
async function loadThumbnail(img, itemId) {
  try {
    const headers = apiKey() ? { "X-API-Key": apiKey() } : {};
    const response = await fetch(`items/${itemId}/thumbnail`, { headers });
    if (!response.ok) return;
    const url = URL.createObjectURL(await response.blob());
    thumbnailUrls.push(url);
    img.src = url;
  } catch (error) {
    // a missing thumbnail is not worth an error message
  }
}

function renderMatches(hits) {
  clearMatches();
  const list = $("matches");
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "match";
    item.dataset.itemId = String(hit.item_id);
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = hit.label;
    img.width = 96;
    img.height = 96;
    const label = document.createElement("span");
    label.className = "match-label";
    label.textContent = hit.label;
    const score = document.createElement("span");
    score.className = "match-score";
    score.textContent = hit.score.toFixed(3);
    const id = document.createElement("span");
    id.className = "match-id muted";
    id.textContent = `item ${hit.item_id}`;
    item.append(img, label, score, id);
    list.append(item);
    loadThumbnail(img, hit.item_id);
  }
}

async function classifyFile(file) {
  if (!file) return;
  showMessage("");
  const preview = $("query-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const result = $("result");
  setState(result, "loading");
  $("result-label").textContent = "…";
  $("result-score").textContent = "";
  clearMatches();
  const k = Math.max(1, Math.min(100, parseInt($("query-k").value, 10) || 5));
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const r = await api(`classify?k=${k}`, { method: "POST", body: form });
    $("result-label").textContent = r.label;
    $("result-score").textContent =
      `score ${r.score.toFixed(3)} · threshold ${r.threshold.toFixed(3)} · ` +
      (r.known ? "known class" : "no class is close enough");
    result.dataset.known = String(r.known);
    renderMatches(r.top);
    setState(result, "done");
  } catch (error) {
    $("result-label").textContent = "error";
    $("result-score").textContent = error.message;
    setState(result, "error");
    showMessage(error.message);
  }
}

function setupQuery() {
  const input = $("query-file");
  input.addEventListener("change", () => classifyFile(input.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) classifyFile(file);
  });
}

// ---------------------------------------------------------------- gallery
async function loadClasses() {
  const status = $("classes-status");
  setState(status, "loading", "loading…");
  try {
    const data = await api("classes");
    const list = $("classes");
    list.replaceChildren();
    for (const entry of data.classes) {
      const item = document.createElement("li");
      item.dataset.label = entry.label;
      const name = document.createElement("span");
      name.className = "class-label";
      name.textContent = entry.label;
      const count = document.createElement("span");
      count.className = "class-count muted";
      count.textContent = `${entry.count} image${entry.count === 1 ? "" : "s"}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove-class";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => removeClass(entry.label, remove));
      item.append(name, count, remove);
      list.append(item);
    }
    const n = data.classes.length;
    setState(status, "done",
      n ? `${n} class${n === 1 ? "" : "es"}, ${data.items} images` : "the gallery is empty");
  } catch (error) {
    setState(status, "error", error.message);
  }
}

// Removing is irreversible: the first click arms the button, the second removes.
async function removeClass(label, button) {
  if (button.dataset.confirm !== "1") {
    button.dataset.confirm = "1";
    button.textContent = "Click again to remove";
    setTimeout(() => {
      button.dataset.confirm = "";
      button.textContent = "Remove";
    }, 4000);
    return;
  }
  button.disabled = true;
  try {
    await api(`classes/${encodeURIComponent(label)}`, { method: "DELETE" });
    showMessage("");
  } catch (error) {
    showMessage(`could not remove ${label}: ${error.message}`);
  }
  await loadClasses();
  await loadHealth();
}

function setupRegister() {
  $("register-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("register-status");
    const label = $("register-label").value.trim();
    const files = $("register-files").files;
    if (!label || !files.length) {
      setState(status, "error", "give a label and at least one image");
      return;
    }
    const form = new FormData();
    form.append("label", label);
    for (const file of files) form.append("files", file, file.name);
    setState(status, "loading", "registering…");
    $("register-submit").disabled = true;
    try {
      const r = await api("register", { method: "POST", body: form });
      let text = `added ${r.added.length} image${r.added.length === 1 ? "" : "s"} to ${r.label}`;
      if (r.skipped.length) {
        text += `; skipped ${r.skipped.map((s) => `${s.file} (${s.reason})`).join(", ")}`;
      }
      setState(status, "done", text);
      $("register-files").value = "";
    } catch (error) {
      setState(status, "error", error.message);
    } finally {
      $("register-submit").disabled = false;
    }
    await loadClasses();
    await loadHealth();
  });
}

function setupKey() {
  const input = $("api-key");
  input.value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
    showMessage("");
    loadClasses();
  });
  // Also keep the key when a test or a user types it without pressing "Use".
  input.addEventListener("change", () => {
    const value = input.value.trim();
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  });
  $("api-key-clear").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    input.value = "";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupQuery();
  setupRegister();
  $("refresh-classes").addEventListener("click", loadClasses);
  loadHealth();
  loadClasses();
});
