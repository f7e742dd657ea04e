// adaptune board: plain JavaScript, no build step, no CDN (see adaptune/board/__init__.py for why).
"use strict";

const state = { lang: "en", strings: {}, form: null, run: null, source: null, records: [], kinds: {} };
const $ = (id) => document.getElementById(id);

// ---- strings ------------------------------------------------------------------------------------------
function t(key, vars) {
  let text = state.strings[key] ?? key;
  for (const [name, value] of Object.entries(vars || {})) text = text.replace(`{${name}}`, value);
  return text;
}

function chooseLanguage() {
  const saved = localStorage.getItem("adaptune-board-lang");
  if (saved) return saved;
  return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh-CN" : "en";
}

async function setLanguage(lang) {
  state.strings = await (await fetch(`/static/i18n/${lang}.json`)).json();
  state.lang = lang;
  document.documentElement.lang = lang;
  $("lang").value = lang;
  localStorage.setItem("adaptune-board-lang", lang);
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  document.title = t("app.title");
  if (state.form) methodTrains();
  if (state.form) $("upload-limit").textContent = t("new.upload_limit", { mb: Math.round(state.form.max_upload_bytes / 1048576) });
  if (state.run) showRunRow(state.run);
  if (!$("view-runs").hidden) loadRuns();
}

// ---- HTTP and errors ------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) throw (body && body.error) ? body.error : { type: "http", message: `HTTP ${response.status}` };
  return body;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) });

function showError(box, error) {
  box.replaceChildren();
  box.hidden = false;
  const title = document.createElement("b");
  title.textContent = t(`error.${error.type}`) === `error.${error.type}` ? t("error.generic") : t(`error.${error.type}`);
  const message = document.createElement("div");
  message.className = "message";
  message.textContent = error.message || String(error);
  box.append(title, message);
  if (error.file || error.line || error.field) {
    const dl = document.createElement("dl");
    for (const key of ["file", "line", "field"]) {
      if (error[key] === null || error[key] === undefined) continue;
      const dt = document.createElement("dt"); dt.textContent = t(`error.${key}`);
      const dd = document.createElement("dd"); dd.className = `error-${key}`; dd.textContent = error[key];
      dl.append(dt, dd);
    }
    box.append(dl);
  }
}
const hideError = (box) => { box.hidden = true; box.replaceChildren(); };
const el = (tag, text, cls) => { const node = document.createElement(tag); if (text !== undefined) node.textContent = text; if (cls) node.className = cls; return node; };
const fmt = (value) => typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toFixed(4)) : String(value ?? "–");

// ---- the run form, from the config schema --------------------------------------------------------------
function fieldInput(section, spec) {
  const box = el("div", undefined, "field");
  const id = `f-${section}-${spec.key}`;
  const label = el("label", spec.key); label.htmlFor = id;
  let input;
  if (spec.type === "enum") {
    input = document.createElement("select");
    for (const value of spec.enum) { const option = el("option", value); option.value = value; input.append(option); }
    input.value = spec.default ?? spec.enum[0];
  } else if (spec.type === "boolean") {
    input = document.createElement("input"); input.type = "checkbox"; input.checked = !!spec.default;
  } else {
    input = document.createElement("input");
    input.type = spec.type === "string" ? "text" : "number";
    if (spec.type === "number") input.step = "any";
    input.placeholder = spec.default === null || spec.default === undefined ? "" : String(spec.default);
  }
  input.id = id; input.dataset.section = section; input.dataset.key = spec.key; input.dataset.type = spec.type;
  const help = el("p", `${spec.help}${spec.help ? " " : ""}(`, "help");
  const word = el("span", t("form.default")); word.dataset.i18n = "form.default";
  help.append(word, document.createTextNode(`: ${spec.default === null ? "null" : spec.default})`));
  box.append(label, input, help);
  return box;
}

function drawFields(container, section, specs) {
  $(container).replaceChildren(...specs.map((spec) => fieldInput(section, spec)));
}

function fieldValues(section) {
  const out = {};
  for (const input of document.querySelectorAll(`[data-section="${section}"]`)) {
    const type = input.dataset.type;
    if (type === "boolean") { out[input.dataset.key] = input.checked; continue; }
    if (input.value === "") continue;  // the default applies
    out[input.dataset.key] = type === "integer" ? parseInt(input.value, 10) : type === "number" ? Number(input.value) : input.value;
  }
  return out;
}

function dataFileRow(split) {
  const row = el("div", undefined, "datafile");
  const label = el("label", t(`data.${split}`)); label.dataset.i18n = `data.${split}`; label.htmlFor = `data-${split}`;
  const path = el("input", undefined, "path"); path.id = `data-${split}`; path.dataset.i18nPlaceholder = "data.path"; path.placeholder = t("data.path");
  const file = document.createElement("input"); file.type = "file"; file.id = `upload-${split}`;
  const button = el("button", t("data.preview")); button.dataset.i18n = "data.preview"; button.id = `preview-${split}`;
  file.addEventListener("change", () => file.files[0] && upload(split, file.files[0]));
  button.addEventListener("click", () => preview($(`data-${split}`).value));
  row.append(label, path, file, button);
  return row;
}

async function loadForm() {
  state.form = await api("/api/form");
  const form = state.form;
  $("packaged").replaceChildren(...form.packaged_models.map((name) => { const o = document.createElement("option"); o.value = name; return o; }));
  $("model").value = form.default_model;
  $("data-files").replaceChildren(...["train", "dev", "test"].map(dataFileRow));
  $("upload-limit").textContent = t("new.upload_limit", { mb: Math.round(form.max_upload_bytes / 1048576) });
  for (const [section, specs] of Object.entries(form.sections)) drawFields(`fields-${section}`, section, specs);
  fill($("task"), Object.keys(form.tasks), form.default_task);
  fill($("method"), Object.keys(form.methods), form.default_method);
  $("task").onchange = () => drawFields("fields-task", "task", form.tasks[$("task").value].fields);
  $("method").onchange = showMethod;
  $("task").onchange();
  showMethod();
}

function fill(select, names, chosen) {
  select.replaceChildren(...names.map((name) => { const o = el("option", name); o.value = name; return o; }));
  select.value = chosen;
}

function methodTrains() {
  const info = state.form.methods[$("method").value];
  $("method-trains").textContent = `${info.trains} (${t("form.default_lr")}: ${info.default_learning_rate ?? "–"})`;
}

function showMethod() {
  methodTrains();
  drawFields("fields-method", "method", state.form.methods[$("method").value].fields);
}

async function upload(split, file) {
  hideError($("preview-error"));
  try {
    if (file.size > state.form.max_upload_bytes) {
      throw { type: "limit_exceeded", message: t("error.too_big", { name: file.name, mb: Math.round(state.form.max_upload_bytes / 1048576) }) };
    }
    const saved = await api(`/api/uploads?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
    $(`data-${split}`).value = saved.path;
    await preview(saved.path);
  } catch (error) { showError($("preview-error"), error); }
}

async function preview(path) {
  hideError($("preview-error"));
  $("preview").hidden = true;
  try {
    const shown = await post("/api/preview", { path, task: { name: $("task").value, ...fieldValues("task") }, data: fieldValues("data") });
    $("preview-name").textContent = shown.path;
    $("preview-count").textContent = t("preview.examples", { n: shown.examples });
    const columns = shown.rows.length ? Object.keys(shown.rows[0]) : [];
    table($("preview-rows"), columns, shown.rows.map((row) => columns.map((c) => Array.isArray(row[c]) ? row[c].join(" ") : row[c])));
    table($("preview-labels"), [t("preview.label"), t("preview.count")], shown.labels.map((item) => [item.label, item.count]));
    $("preview").hidden = false;
  } catch (error) { showError($("preview-error"), error); }
}

function table(node, head, rows) {
  const thead = el("thead"); const tr = el("tr");
  for (const name of head) tr.append(el("th", name));
  thead.append(tr);
  const tbody = el("tbody");
  for (const row of rows) {
    const line = el("tr");
    for (const cell of row) line.append(el("td", fmt(cell), typeof cell === "number" ? "num" : undefined));
    tbody.append(line);
  }
  node.replaceChildren(thead, tbody);
  return node;
}

async function startRun() {
  hideError($("start-error"));
  const data = fieldValues("data");
  for (const split of ["train", "dev", "test"]) if ($(`data-${split}`).value) data[split] = $(`data-${split}`).value;
  const body = {
    name: $("run-name").value,
    model: { name_or_path: $("model").value, ...fieldValues("model") },
    method: { name: $("method").value, ...fieldValues("method") },
    task: { name: $("task").value, ...fieldValues("task") },
    data, training: fieldValues("training"),
  };
  try { openRun((await post("/api/runs", body)).id); } catch (error) { showError($("start-error"), error); }
}

// ---- runs ------------------------------------------------------------------------------------------------
function show(view) {
  for (const name of ["new", "runs", "run"]) $(`view-${name}`).hidden = name !== view;
  if (view !== "run" && state.source) { state.source.close(); state.source = null; }
}

async function loadRuns() {
  show("runs");
  const runs = await api("/api/runs");
  $("runs-empty").hidden = runs.length > 0;
  const body = $("runs-table").querySelector("tbody");
  body.replaceChildren(...runs.map((run) => {
    const tr = el("tr"); tr.dataset.run = run.id;
    const open = el("button", run.id); open.className = "open-run"; open.onclick = () => openRun(run.id);
    const cell = el("td"); cell.append(open);
    const status = el("td", t(`status.${run.status}`), `status status-${run.status}`);
    const actions = el("td");
    if (run.resumable) { const b = el("button", t("run.resume"), "resume-run"); b.onclick = async () => { await post(`/api/runs/${run.id}/resume`); openRun(run.id); }; actions.append(b); }
    tr.append(cell, status, el("td", run.task), el("td", run.method), el("td", run.model), actions);
    return tr;
  }));
}

function showRunRow(run) {
  state.run = run;
  $("run-id").textContent = run.id;
  $("run-status").textContent = t(`status.${run.status}`);
  $("run-status").className = `status status-${run.status}`;
  $("run-status").dataset.status = run.status;
  $("run-message").hidden = !run.message;
  $("run-message").textContent = run.message || "";
  $("stop-btn").hidden = run.status !== "running";
  $("resume-btn").hidden = !run.resumable;
  $("dl-adapter").href = `/api/runs/${run.id}/adapter.zip`;
  $("dl-yaml").href = `/api/runs/${run.id}/config.yaml`;
}

async function openRun(id) {
  show("run");
  state.records = [];
  drawChart();
  $("report").replaceChildren(el("p", t("report.pending"), "help"));
  $("errors").replaceChildren();
  $("try-out").replaceChildren();
  hideError($("try-error"));
  showRunRow(await api(`/api/runs/${id}`));
  if (state.source) state.source.close();
  const source = new EventSource(`/api/runs/${id}/events`);
  state.source = source;
  source.addEventListener("metric", (event) => { state.records.push(JSON.parse(event.data)); drawChart(); });
  source.addEventListener("reset", () => { state.records = []; drawChart(); });
  source.addEventListener("status", (event) => showRunRow(JSON.parse(event.data)));
  source.addEventListener("end", () => { source.close(); if (state.run.status === "finished") loadResults(id); });
}

// ---- the live chart ---------------------------------------------------------------------------------------
function series() {
  const train = [], evalLoss = [], metric = [];
  let metricName = null, last = {};
  for (const r of state.records) {
    if ("train_loss" in r) { train.push([r.step, r.train_loss]); last.loss = r.train_loss; last.tps = r.tokens_per_s; }
    if ("eval_loss" in r) evalLoss.push([r.step, r.eval_loss]);
    const name = metricName || Object.keys(r).find((k) => k.startsWith("eval_") && k !== "eval_loss");
    if (name && name in r) { metricName = name; metric.push([r.step, r[name]]); last.metric = r[name]; }
    last.step = r.step;
  }
  return { train, evalLoss, metric, metricName, last };
}

function drawChart() {
  const canvas = $("chart"), ctx = canvas.getContext("2d");
  const { train, evalLoss, metric, metricName, last } = series();
  canvas.dataset.points = String(state.records.length);
  $("stat-step").textContent = fmt(last.step);
  $("stat-loss").textContent = fmt(last.loss);
  $("stat-metric").textContent = metricName ? `${metricName.slice(5)} ${fmt(last.metric)}` : "–";
  $("stat-tps").textContent = last.tps === undefined ? "–" : Math.round(last.tps).toLocaleString();
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const pad = 40, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  const steps = [...train, ...evalLoss, ...metric].map((p) => p[0]);
  const losses = [...train, ...evalLoss].map((p) => p[1]);
  if (!steps.length) return;
  const x0 = Math.min(...steps), x1 = Math.max(...steps, x0 + 1);
  const y0 = Math.min(0, ...losses), y1 = Math.max(...losses, 1e-9);
  ctx.strokeStyle = "#999"; ctx.strokeRect(pad, pad, w, h);
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText(fmt(y1), 2, pad + 4); ctx.fillText(fmt(y0), 2, pad + h); ctx.fillText(String(x0), pad, pad + h + 14);
  ctx.fillText(String(x1), pad + w - 20, pad + h + 14); ctx.fillText("1", pad + w + 4, pad + 4); ctx.fillText("0", pad + w + 4, pad + h);
  const line = (points, color, lo, hi) => {
    if (!points.length) return;
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    points.forEach(([x, y], i) => {
      const px = pad + ((x - x0) / (x1 - x0)) * w, py = pad + h - ((y - lo) / (hi - lo || 1)) * h;
      if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      if (points.length === 1) ctx.arc(px, py, 2, 0, 2 * Math.PI);
    });
    ctx.stroke();
  };
  line(train, "#1166cc", y0, y1);
  line(evalLoss, "#ee8800", y0, y1);
  line(metric, "#22aa66", 0, 1);
}

// ---- report, errors -------------------------------------------------------------------------------------
const SCORES = ["precision", "recall", "f1", "support"];

function scoreTable(title, rows) {
  const box = el("div");
  box.append(el("h4", title));
  box.append(table(el("table", undefined, "scores"), ["", ...SCORES.map((k) => t(`report.${k}`))],
    Object.entries(rows).map(([name, s]) => [name, ...SCORES.map((k) => s[k])])));
  return box;
}

function confusionTable(confusion) {
  const box = el("div");
  box.append(el("h4", t("report.confusion")));
  const rows = confusion.matrix.map((row, i) => [confusion.labels[i], ...row]);
  const node = table(el("table", undefined, "confusion"), [t("report.gold_predicted"), ...confusion.labels], rows);
  node.querySelectorAll("tbody tr").forEach((tr, i) => tr.children[i + 1].classList.add("diagonal"));
  box.append(node);
  return box;
}

function splitReport(run, split, info) {
  const box = el("div", undefined, "split-report"); box.dataset.split = split;
  box.append(el("h4", `${t(`data.${split}`)}: ${Object.entries(info.headline).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")}`));
  const r = info.report;
  if (r.per_type) box.append(scoreTable(t("report.per_type"), { ...r.per_type, micro: r.micro, macro: r.macro }));
  if (r.per_class) box.append(scoreTable(t("report.per_class"), { ...r.per_class, micro: r.micro, macro: r.macro, weighted: r.weighted }));
  if (r.token_level && r.token_level.per_class) box.append(scoreTable(t("report.token_level"), r.token_level.per_class));
  if (r.confusion_matrix) box.append(confusionTable(r.confusion_matrix));
  if (info.confusion_png) { const img = el("img", undefined, "plot"); img.src = `/api/runs/${run}/files/${info.confusion_png}`; box.append(img); }
  return box;
}

async function loadResults(id) {
  try {
    const shown = await api(`/api/runs/${id}/report`);
    const parts = Object.entries(shown.splits).map(([split, info]) => splitReport(id, split, info));
    for (const plot of shown.plots.filter((p) => p.startsWith("training"))) { const img = el("img", undefined, "plot"); img.src = `/api/runs/${id}/files/${plot}`; parts.push(img); }
    $("report").replaceChildren(...parts);
    const split = "dev" in shown.splits ? "dev" : Object.keys(shown.splits)[0];
    if (split) loadErrors(id, split);
  } catch (error) { const box = el("div", undefined, "error"); showError(box, error); $("report").replaceChildren(box); }
}

async function loadErrors(id, split) {
  try {
    const found = await api(`/api/runs/${id}/errors?split=${split}&limit=15`);
    const head = el("p", t("errors.summary", { errors: found.errors, n: found.examples, split: t(`data.${split}`) }));
    const tagged = found.rows.some((row) => row.tokens);
    const rows = found.rows.map((row) => tagged
      ? [row.where, row.tokens.map((tok, i) => row.gold[i] === row.predicted[i] ? tok : `${tok}[${row.gold[i]}→${row.predicted[i]}]`).join(" "), row.wrong]
      : [row.where, row.text, row.gold.join(", "), row.predicted.join(", "), row.score]);
    const columns = tagged ? [t("errors.where"), t("errors.tokens"), t("errors.wrong")]
      : [t("errors.where"), t("errors.text"), t("errors.gold"), t("errors.predicted"), t("errors.score")];
    $("errors").replaceChildren(head, table(el("table", undefined, "error-rows"), columns, rows));
  } catch (error) { const box = el("div", undefined, "error"); showError(box, error); $("errors").replaceChildren(box); }
}

// ---- try ---------------------------------------------------------------------------------------------------
function drawEntities(prediction) {
  const out = el("p", undefined, "entities"); let at = 0;
  for (const entity of prediction.entities) {
    out.append(document.createTextNode(prediction.text.slice(at, entity.start)));
    const mark = el("mark", prediction.text.slice(entity.start, entity.end), "entity"); mark.dataset.type = entity.type;
    mark.append(el("sup", entity.type)); out.append(mark); at = entity.end;
  }
  out.append(document.createTextNode(prediction.text.slice(at)));
  if (!prediction.entities.length) out.append(el("span", ` (${t("try.no_entities")})`, "help"));
  return out;
}

function drawScores(prediction) {
  const rows = Object.entries(prediction.scores).sort((a, b) => b[1] - a[1]);
  const node = el("table", undefined, "probabilities");
  for (const [label, p] of rows) {
    const tr = el("tr"); tr.dataset.label = label;
    const bar = el("span", undefined, "bar"); bar.style.width = `${Math.round(p * 200)}px`;
    const cell = el("td"); cell.append(bar, document.createTextNode(` ${(p * 100).toFixed(1)}%`));
    tr.append(el("td", label), cell); node.append(tr);
  }
  return node;
}

async function tryIt() {
  const id = state.run.id, text = $("try-text").value;
  hideError($("try-error"));
  $("try-out").replaceChildren(el("p", t("try.working"), "help"));
  try {
    state.kinds[id] = state.kinds[id] || (await api(`/api/runs/${id}/kind`)).kind;
    if (state.kinds[id] === "generate") return streamReply(id, text);
    const { prediction } = await post(`/api/runs/${id}/predict`, { text });
    const parts = [];
    if (prediction.entities) parts.push(drawEntities(prediction));
    if (prediction.scores) { parts.push(el("p", `${t("try.predicted")}: ${prediction.label ?? prediction.relation ?? (prediction.labels || []).join(", ")}`, "predicted")); parts.push(drawScores(prediction)); }
    if (!parts.length) parts.push(el("pre", JSON.stringify(prediction, null, 2)));
    $("try-out").replaceChildren(...parts);
  } catch (error) { $("try-out").replaceChildren(); showError($("try-error"), error); }
}

function streamReply(id, text) {
  const out = el("p", "", "reply");
  $("try-out").replaceChildren(out);
  const source = new EventSource(`/api/runs/${id}/generate?text=${encodeURIComponent(text)}`);
  source.addEventListener("piece", (event) => { out.textContent += JSON.parse(event.data).text; });
  source.addEventListener("failure", (event) => showError($("try-error"), JSON.parse(event.data).error));
  source.addEventListener("end", () => source.close());
}

// ---- start -------------------------------------------------------------------------------------------------
async function main() {
  $("lang").onchange = () => setLanguage($("lang").value);
  $("nav-new").onclick = () => show("new");
  $("nav-runs").onclick = loadRuns;
  $("start-btn").onclick = startRun;
  $("try-btn").onclick = tryIt;
  $("stop-btn").onclick = async () => showRunRow(await post(`/api/runs/${state.run.id}/stop`));
  $("resume-btn").onclick = async () => { await post(`/api/runs/${state.run.id}/resume`); openRun(state.run.id); };
  try {
    await setLanguage(chooseLanguage());
    await loadForm();
  } catch (error) { showError($("page-error"), error); }
}
window.addEventListener("error", (event) => showError($("page-error"), { type: "internal", message: String(event.message) }));
main();
