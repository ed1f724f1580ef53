// The aigi page: upload images to /v1/detect and show one card per image. Plain JavaScript, no dependencies.
"use strict";

const WORDS = { generated: "Generated", real: "Real photo", uncertain: "Uncertain", error: "Could not check" };
const MEANING = {
  generated: "The evidence points to an image made by a generative model.",
  real: "The evidence points to a real photograph.",
  uncertain: "The model is not confident either way: its calls in this range are unreliable.",
};
const form = document.getElementById("upload");
const input = document.getElementById("files");
const cards = document.getElementById("cards");
const status = document.getElementById("status");
const modelSelect = document.getElementById("model");
const explainBox = document.getElementById("explain");
let models = [];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function loadModels() {
  const response = await fetch("/v1/models");
  models = await response.json();
  for (const m of models) {
    modelSelect.append(el("option", { value: m.name }, `${m.name} (${m.detector})`));
  }
  syncExplain();
}

function syncExplain() {
  const chosen = models.find((m) => m.name === modelSelect.value);
  const hasMap = chosen ? chosen.heatmap : false;
  explainBox.disabled = !hasMap;
  if (!hasMap) explainBox.checked = false;
}

function probabilityText(d) {
  return d.prob_generated === null ? "" : `probability generated: ${Math.round(d.prob_generated * 100)}%`;
}

function percent(x) {
  return `${Math.round(x * 100)}%`;
}

// Why, in plain words: the band and threshold the verdict came from (the raw basis stays in the title).
function whyText(d, decision) {
  const p = d.prob_generated;
  if (d.verdict === "uncertain" && decision.band) {
    const [lo, hi] = decision.band;
    return `The detector gave ${percent(p)}. Between ${percent(lo)} and ${percent(hi)} it was right less than 95% ` +
      "of the time on validation images, so it does not decide.";
  }
  if (d.basis.startsWith("declared")) return `The file itself says so: ${d.basis}.`;
  if (p === null) return d.basis;
  const side = p >= decision.threshold ? "at or above" : "below";
  return `The detector gave ${percent(p)}, ${side} its threshold of ${percent(decision.threshold)}.`;
}

// The probability bar with the uncertain range shaded and the threshold marked.
function probabilityBar(d, decision) {
  const bar = el("div", { class: "bar", role: "img", "aria-label": probabilityText(d) });
  if (decision.band) {
    const [lo, hi] = decision.band;
    const band = el("i", { class: "band", title: "uncertain range" });
    band.style.left = percent(lo);
    band.style.width = percent(hi - lo);
    bar.append(band);
  }
  const fill = el("span");
  fill.style.width = percent(d.prob_generated);
  const mark = el("b", { class: "threshold", title: "threshold" });
  mark.style.left = percent(decision.threshold);
  bar.append(fill, mark);
  return bar;
}

function findingsList(d) {
  const list = el("ul", { class: "findings" });
  const prov = d.provenance;
  if (!prov) return list;
  for (const f of prov.findings) {
    list.append(el("li", {}, el("span", { class: "strength" }, `${f.strength}`), ` ${f.source}: ${f.summary}`));
  }
  for (const p of prov.problems) list.append(el("li", { class: "problem" }, p));
  if (!prov.findings.length && !prov.problems.length) {
    list.append(el("li", { class: "problem" }, "the file declares nothing about its origin (this proves nothing)"));
  }
  return list;
}

function card(d, file, decision) {
  const verdict = d.verdict in WORDS ? d.verdict : "error";
  const article = el("article", { class: `card ${verdict}`, "aria-label": `${d.path}: ${WORDS[verdict]}` });
  article.append(el("h2", {}, d.path));
  const figure = el("div", { class: "figure" });
  if (file) figure.append(el("img", { src: URL.createObjectURL(file), alt: `the uploaded image ${d.path}` }));
  article.append(figure);
  article.append(el("p", { class: "verdict" }, WORDS[verdict]));
  if (verdict === "error") {
    article.append(el("p", { class: "basis error-message" }, `This file could not be checked: ${d.error}`));
    return article;
  }
  article.append(el("p", { class: "meaning" }, MEANING[verdict]));
  article.append(el("p", { class: "prob" }, probabilityText(d)));
  article.append(probabilityBar(d, decision));
  article.append(el("p", { class: "legend" }, decision.band ? "0% to 100%; shaded: uncertain range; red line: threshold"
    : "0% to 100%; red line: threshold"));
  article.append(el("p", { class: "basis", title: d.basis }, `Why: ${whyText(d, decision)}`));
  article.append(findingsList(d));
  if (d.heatmap) {
    // The heatmap PNG shows the crop the model analysed, with its per-patch evidence laid over it (and a colour
    // scale): the toggle swaps the uploaded image for it.
    const thumb = figure.querySelector("img");
    const heat = el("img", { class: "heat", src: `data:image/png;base64,${d.heatmap}`,
      alt: "the analysed crop with the model's per-patch evidence laid over it" });
    heat.hidden = true;
    figure.append(heat);
    const id = `heat-${cards.children.length}-${Math.random().toString(36).slice(2, 8)}`;
    const toggle = el("input", { type: "checkbox", id, class: "heat-toggle" });
    toggle.addEventListener("change", () => {
      heat.hidden = !toggle.checked;
      if (thumb) thumb.hidden = toggle.checked;
    });
    article.append(el("label", { for: id }, toggle, " show heatmap (where the model saw generated traces)"));
  }
  return article;
}

async function send(files) {
  if (!files.length) return;
  const body = new FormData();
  for (const f of files) body.append("files", f, f.name);
  const query = new URLSearchParams({
    model: modelSelect.value,
    explain: explainBox.checked,
    provenance: document.getElementById("provenance").checked,
  });
  status.textContent = `checking ${files.length} image${files.length > 1 ? "s" : ""}...`;
  let response, payload;
  try {
    response = await fetch(`/v1/detect?${query}`, { method: "POST", body });
    payload = await response.json();
  } catch (err) {
    status.textContent = `The server could not be reached: ${err}`;
    return;
  }
  if (!payload.results) {
    status.textContent = `Not checked: ${payload.error || response.statusText}`;
    return;
  }
  const count = `${files.length} image${files.length > 1 ? "s" : ""}`;
  status.textContent = response.ok ? `Checked ${count} with the model "${payload.model}".` : payload.error;
  const decision = { threshold: payload.threshold, band: payload.band };
  payload.results.forEach((d, i) => cards.prepend(card(d, files[i], decision)));
}

input.addEventListener("change", () => { send(Array.from(input.files)); input.value = ""; });
modelSelect.addEventListener("change", syncExplain);
form.addEventListener("submit", (event) => event.preventDefault());
for (const name of ["dragenter", "dragover"]) {
  form.addEventListener(name, (event) => { event.preventDefault(); form.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  form.addEventListener(name, () => form.classList.remove("over"));
}
form.addEventListener("drop", (event) => { event.preventDefault(); send(Array.from(event.dataTransfer.files)); });
loadModels();
