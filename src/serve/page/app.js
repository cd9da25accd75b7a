// convnet serve: the page. Plain JavaScript, no build step, nothing loaded from elsewhere.
// The server does the heavy work (preparing drawings, running the network); this file
// fetches JSON, listens to server-sent events and draws SVG charts and canvases.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    // Through the CSSOM: the page's content security policy refuses style attributes.
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const svgEl = (tag, attrs = {}) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  return e;
};

async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}
const q = (params) => new URLSearchParams(params).toString();

const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f", "#7c3aed", "#b45309"];
const pct = (c, t) => (t > 0 ? (100 * c / t).toFixed(2) : "0.00");
const count = (c, t) => `${c}/${t} (${pct(c, t)}%)`;
const b64bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const b64floats = (s) => new Float32Array(b64bytes(s).buffer);

const state = {
  runs: [], sweeps: [], roots: [],
  selected: new Set(),   // runs whose curves are overlaid
  focus: null,           // the run whose model the Model and Draw tabs show
  sweep: null,
  tab: "curves",
  metrics: {}, steps: {}, // by run id
  colours: {},
  model: null, evaluation: null,
  strokes: [], live: false,
};

// ---------- runs ----------

function colour(id) {
  if (!(id in state.colours)) state.colours[id] = PALETTE[Object.keys(state.colours).length % PALETTE.length];
  return state.colours[id];
}

const STATUS = { running: "● running", finished: "✓ finished", diverged: "✗ diverged", interrupted: "‖ interrupted", new: "… new" };

async function loadRuns() {
  const r = await api("/api/runs");
  state.runs = r.runs || [];
  state.sweeps = r.sweeps || [];
  state.roots = r.roots || [];
  $("roots").textContent = "serving " + state.roots.join(", ");
  if (state.selected.size === 0 && state.runs.length > 0) {
    const last = state.runs.reduce((a, b) => ((b.updated || 0) > (a.updated || 0) ? b : a));
    state.selected.add(last.id);
    if (!state.focus) state.focus = last.id;
  }
  for (const id of [...state.selected]) if (!state.runs.some((x) => x.id === id)) state.selected.delete(id);
  renderRuns();
  renderSweeps();
  renderDrawModels();
  await Promise.all([...state.selected].map(ensureLogs));
  if (state.tab === "curves") renderCurves();
}

function renderRuns() {
  $("run-count").textContent = `(${state.runs.length})`;
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const run of state.runs) {
    const box = el("input", { type: "checkbox", "aria-label": `overlay ${run.name}` });
    box.checked = state.selected.has(run.id);
    box.addEventListener("change", async () => {
      if (box.checked) { state.selected.add(run.id); await ensureLogs(run.id); } else state.selected.delete(run.id);
      renderRuns();
      renderCurves();
    });
    const best = run.best_val ? `val ${count(run.best_val.correct, run.best_val.total)}` : "val —";
    const test = run.test ? (() => { const [c, t] = run.test.split("/").map(Number); return `test ${count(c, t)}`; })() : "";
    const name = el("td", { class: "name", title: run.id },
      el("span", { class: "swatch", style: `background:${state.selected.has(run.id) ? colour(run.id) : "transparent"}` }),
      run.name.replace(/_/g, "_\u200b"),
      el("div", { class: "muted small" }, `${run.model || "?"} · ${run.dataset || "?"}`));
    name.addEventListener("click", () => { state.focus = run.id; renderRuns(); showTab(state.tab === "curves" ? "model" : state.tab); });
    const tr = el("tr", { "data-id": run.id, class: state.focus === run.id ? "focus" : "" },
      el("td", {}, box), name,
      el("td", {}, el("div", { class: `status ${run.status}` }, STATUS[run.status] || run.status),
        el("div", { class: "muted small" }, `epoch ${run.epochs}/${run.epochs_total ?? "?"} · ${Math.round(run.seconds)} s`)),
      el("td", { class: "num" }, el("div", {}, best), el("div", { class: "small" }, test)));
    body.append(tr);
  }
}

function renderSweeps() {
  const ul = $("sweeps");
  ul.replaceChildren();
  if (state.sweeps.length === 0) ul.append(el("li", { class: "muted" }, "none"));
  for (const s of state.sweeps) {
    const li = el("li", { class: state.sweep === s.id ? "focus" : "" }, s.name || s.id);
    li.addEventListener("click", () => { state.sweep = s.id; renderSweeps(); showTab("sweep"); });
    ul.append(li);
  }
}

async function ensureLogs(id) {
  if (state.metrics[id]) return;
  const [m, s] = await Promise.all([api("/api/metrics?" + q({ run: id })), api("/api/steps?" + q({ run: id }))]);
  state.metrics[id] = m.rows;
  state.steps[id] = s.rows;
}

// ---------- live updates ----------

function connect() {
  const es = new EventSource("/api/events");
  let fallback = null;
  const setLive = (on) => {
    state.live = on;
    const l = $("live");
    l.className = "live " + (on ? "on" : "off");
    l.textContent = on ? "live" : "reconnecting… (polling every 5 s)";
    if (on && fallback) { clearInterval(fallback); fallback = null; }
    if (!on && !fallback) fallback = setInterval(poll, 5000);
  };
  es.onopen = () => setLive(true);
  es.onerror = () => setLive(false);
  es.addEventListener("metrics", (e) => {
    const { id, rows } = JSON.parse(e.data);
    if (!state.metrics[id]) return;
    for (const r of rows) if (!state.metrics[id].some((x) => x.epoch === r.epoch)) state.metrics[id].push(r);
    if (state.selected.has(id) && state.tab === "curves") renderCurves();
  });
  es.addEventListener("steps", (e) => {
    const { id, rows } = JSON.parse(e.data);
    if (!state.steps[id]) return;
    const last = state.steps[id].length ? state.steps[id][state.steps[id].length - 1][0] : -1;
    state.steps[id].push(...rows.filter((r) => r[0] > last));
    if (state.selected.has(id) && state.tab === "curves") renderCurves();
  });
  es.addEventListener("reset", (e) => {
    const { id } = JSON.parse(e.data);
    delete state.metrics[id];
    delete state.steps[id];
    if (state.selected.has(id)) ensureLogs(id).then(renderCurves);
  });
  es.addEventListener("runs", () => loadRuns().catch(console.error));
}

// The fallback while the event stream is down: read the selected runs' logs again.
async function poll() {
  for (const id of state.selected) { delete state.metrics[id]; delete state.steps[id]; }
  await loadRuns().catch(() => {});
}

// ---------- charts ----------

function niceTicks(lo, hi, n = 5) {
  if (!(hi > lo)) { hi = lo + 1; }
  const span = hi - lo, step0 = span / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

const fmt = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : +v.toPrecision(3) + "");

// An SVG line chart of `series` ({label, colour, dash, points: [[x, y]]}) with axis labels.
function lineChart(fig, { title, xLabel, yLabel, series, logY, yMin, wide, integerX }) {
  fig.replaceChildren();
  const W = wide ? 1120 : 560, H = 300, m = { l: 58, r: 12, t: 26, b: 40 };
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const pts = series.flatMap((s) => s.points).filter(([, y]) => y != null && isFinite(y) && (!logY || y > 0));
  svg.setAttribute("data-points", String(pts.length));
  const heading = svgEl("text", { x: m.l, y: 16, class: "title" });
  heading.textContent = title;
  svg.append(heading);
  if (pts.length === 0) {
    const t = svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" });
    t.textContent = "no data yet";
    svg.append(t);
    fig.append(svg);
    return;
  }
  const ty = (y) => (logY ? Math.log10(y) : y);
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => ty(p[1]))), Math.max(...pts.map((p) => ty(p[1])))];
  if (yMin !== undefined && !logY) y0 = Math.min(y0, yMin);
  if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (x) => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
  const sy = (y) => H - m.b - (ty(y) - y0) / (y1 - y0) * (H - m.t - m.b);
  const grid = svgEl("g", { class: "grid" }), axis = svgEl("g", { class: "axis" });
  axis.append(svgEl("line", { x1: m.l, y1: H - m.b, x2: W - m.r, y2: H - m.b }), svgEl("line", { x1: m.l, y1: m.t, x2: m.l, y2: H - m.b }));
  for (const v of niceTicks(x0, x1, wide ? 10 : 6).filter((v) => !integerX || Number.isInteger(v))) {
    const x = sx(v);
    grid.append(svgEl("line", { x1: x, y1: m.t, x2: x, y2: H - m.b }));
    const t = svgEl("text", { x, y: H - m.b + 14, "text-anchor": "middle" }); t.textContent = fmt(v); axis.append(t);
  }
  const yTicks = logY ? niceTicks(y0, y1, 5).map((e) => Math.pow(10, e)) : niceTicks(y0, y1, 5);
  for (const v of yTicks) {
    const y = sy(v);
    if (!(y >= m.t - 1 && y <= H - m.b + 1)) continue;
    grid.append(svgEl("line", { x1: m.l, y1: y, x2: W - m.r, y2: y }));
    const t = svgEl("text", { x: m.l - 6, y: y + 4, "text-anchor": "end" }); t.textContent = fmt(v); axis.append(t);
  }
  const xl = svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle" }); xl.textContent = xLabel;
  const yl = svgEl("text", { x: 14, y: (m.t + H - m.b) / 2, "text-anchor": "middle", transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` });
  yl.textContent = yLabel + (logY ? " (log scale)" : "");
  svg.append(grid, axis, xl, yl);
  for (const s of series) {
    const ok = s.points.filter(([, y]) => y != null && isFinite(y) && (!logY || y > 0));
    if (ok.length === 0) continue;
    svg.append(svgEl("polyline", {
      points: ok.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "),
      fill: "none", stroke: s.colour, "stroke-width": s.width || 1.8, "stroke-dasharray": s.dash ? "5 4" : "",
      opacity: s.faint ? 0.3 : 1,
    }));
    if (ok.length <= 60 && !s.faint) {
      for (const [x, y] of ok) svg.append(svgEl("circle", { cx: sx(x), cy: sy(y), r: 2.6, fill: s.colour, class: "point" }));
    }
  }
  fig.append(svg);
}

// TensorBoard's smoothing: an exponential moving average, debiased at the start.
function smooth(points, w) {
  let last = 0, n = 0;
  return points.map(([x, y]) => { last = last * w + (1 - w) * y; n += 1; return [x, last / (1 - Math.pow(w, n))]; });
}

function renderCurves() {
  const ids = [...state.selected].filter((id) => state.metrics[id]);
  $("curves-empty").hidden = ids.length > 0;
  const runs = ids.map((id) => state.runs.find((r) => r.id === id)).filter(Boolean);
  const legend = $("legend");
  legend.replaceChildren();
  for (const r of runs) {
    const p = r.params || {};
    legend.append(el("span", {}, el("span", { class: "swatch", style: `background:${colour(r.id)}` }),
      `${r.name} — ${r.model || "?"}, lr ${p.lr ?? "?"}, batch ${p.batch_size ?? "?"}, wd ${p.weight_decay ?? "?"}, ${p.optimizer ?? ""}, seed ${p.seed ?? "?"}`));
  }
  if (runs.length) legend.append(el("span", { class: "muted" }, "solid: training · ", el("span", { class: "dash" }), " validation"));
  const log = $("log-scale").checked;
  const per = (key, f) => runs.flatMap((r) => [
    { label: `${r.name} train`, colour: colour(r.id), points: state.metrics[r.id].map((m) => [m.epoch, f(m, "train")]) },
    { label: `${r.name} val`, colour: colour(r.id), dash: true, points: state.metrics[r.id].filter((m) => m.val_total > 0).map((m) => [m.epoch, f(m, "val")]) },
  ]);
  lineChart($("chart-loss"), { title: "Loss per epoch", xLabel: "epoch", yLabel: "loss", logY: log, integerX: true, series: per("loss", (m, s) => m[`${s}_loss`]) });
  lineChart($("chart-acc"), { title: "Accuracy per epoch", xLabel: "epoch", yLabel: "accuracy (%)", integerX: true, series: per("acc", (m, s) => (100 * m[`${s}_correct`]) / Math.max(1, m[`${s}_total`])) });
  const w = Number($("smoothing").value);
  const steps = runs.flatMap((r) => {
    const raw = (state.steps[r.id] || []).map(([i, l]) => [i, l]);
    return [{ label: `${r.name} raw`, colour: colour(r.id), points: raw, faint: true, width: 1 }, { label: r.name, colour: colour(r.id), points: smooth(raw, w) }];
  });
  lineChart($("chart-steps"), { title: `Training loss per step (smoothing ${w.toFixed(2)})`, xLabel: "iteration", yLabel: "loss", logY: log, wide: true, series: steps });
}

// ---------- sweeps ----------

function viridis(t) {
  const a = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  t = Math.max(0, Math.min(1, isFinite(t) ? t : 0)) * (a.length - 1);
  const i = Math.min(a.length - 2, Math.floor(t)), f = t - i;
  return `rgb(${a[i].map((v, k) => Math.round(v + (a[i + 1][k] - v) * f)).join(",")})`;
}

async function renderSweep() {
  $("sweep-empty").hidden = !!state.sweep;
  if (!state.sweep) return;
  const s = await api("/api/sweep?" + q({ id: state.sweep }));
  $("sweep-title").textContent = `${s.name}: ${s.trials.length} trials over ${s.keys.join(" × ")}`;
  const open = (t) => { if (!t.run) return; state.selected.add(t.run); state.focus = t.run; ensureLogs(t.run).then(() => { renderRuns(); showTab("curves"); }); };
  const table = $("sweep-table");
  table.replaceChildren(el("tr", {}, el("th", {}, "trial"), ...s.keys.map((k) => el("th", {}, k)), el("th", {}, "status"), el("th", {}, "best val"), el("th", {}, "epoch")));
  const done = s.trials.filter((t) => t.status === "done" && t.best_val_acc != null);
  const best = done.reduce((b, t) => (!b || t.best_val_acc > b.best_val_acc ? t : b), null);
  for (const t of s.trials) {
    const tr = el("tr", { class: t.run ? "clickable" : "" }, el("td", {}, t.name), ...t.values.map((v) => el("td", {}, v)),
      el("td", {}, t.status), el("td", {}, t.best_val_acc != null ? (t.best_val ? count(t.best_val.correct, t.best_val.total) : (100 * t.best_val_acc).toFixed(2) + "%") + (t === best ? " ✓ best" : "") : "—"), el("td", {}, t.best_epoch ?? "—"));
    tr.addEventListener("click", () => open(t));
    table.append(tr);
  }
  const hm = $("sweep-heatmap");
  hm.replaceChildren();
  if (s.keys.length !== 2) return;
  const [rows, cols] = s.axes;
  const accs = done.map((t) => t.best_val_acc);
  const [lo, hi] = [Math.min(...accs), Math.max(...accs)];
  const cell = 74, W = 110 + cols.length * cell, H = 50 + rows.length * 34;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "best validation accuracy per trial" });
  const label = (x, y, text, anchor = "middle", extra = {}) => { const t = svgEl("text", { x, y, "text-anchor": anchor, ...extra }); t.textContent = text; svg.append(t); };
  label(110 + cols.length * cell / 2, 14, s.keys[1]);
  label(8, 32, s.keys[0] + " ↓", "start");
  cols.forEach((c, j) => label(110 + j * cell + cell / 2, 44, c));
  rows.forEach((r, i) => {
    label(104, 50 + i * 34 + 22, r, "end");
    cols.forEach((c, j) => {
      const t = s.trials.find((t) => t.values[0] === r && t.values[1] === c);
      const ok = t && t.status === "done" && t.best_val_acc != null;
      const rect = svgEl("rect", { x: 110 + j * cell, y: 50 + i * 34, width: cell - 2, height: 32, fill: ok ? viridis((t.best_val_acc - lo) / (hi - lo || 1)) : "#e5e7eb", "data-trial": t ? t.name : "", style: "cursor:pointer" });
      if (t) {
        const title = svgEl("title");
        title.textContent = `${t.name}: ${ok ? `best validation ${t.best_val ? count(t.best_val.correct, t.best_val.total) : (100 * t.best_val_acc).toFixed(2) + "%"}` : t.status}`;
        rect.append(title);
      }
      rect.addEventListener("click", () => t && open(t));
      svg.append(rect);
      const v = ok ? (100 * t.best_val_acc).toFixed(2) + "%" + (t === best ? " ✓" : "") : t ? t.status : "—";
      label(110 + j * cell + cell / 2 - 1, 50 + i * 34 + 21, v, "middle", { fill: ok && (t.best_val_acc - lo) / (hi - lo || 1) > 0.6 ? "#111" : ok ? "#fff" : "#555", style: "pointer-events:none" });
    });
  });
  hm.append(svg, el("p", { class: "hint" }, `Best validation accuracy, ${(100 * lo).toFixed(2)}% (dark) to ${(100 * hi).toFixed(2)}% (light). Click a cell to open that trial.`));
}

// ---------- colours for maps and kernels ----------

// Blue - white - red for signed values, t in [-1, 1].
function diverging(t) {
  const a = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
  t = (Math.max(-1, Math.min(1, isFinite(t) ? t : 0)) + 1) / 2 * (a.length - 1);
  const i = Math.min(a.length - 2, Math.floor(t)), f = t - i;
  return a[i].map((v, k) => Math.round(v + (a[i + 1][k] - v) * f));
}
function greys(t) { const v = Math.round(255 * (1 - Math.max(0, Math.min(1, t)))); return [v, v, v]; }

// A canvas of w x h values, drawn with `colour(v)` -> [r, g, b], shown `zoom` times larger.
function valueCanvas(values, w, h, colourOf, zoom) {
  const c = el("canvas", { width: w, height: h, class: "px" });
  c.style.width = `${w * zoom}px`;
  c.style.height = `${h * zoom}px`;
  const ctx = c.getContext("2d"), img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = colourOf(values[i]);
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return c;
}
function greyCanvas(bytes, w, h, zoom, invert) {
  return valueCanvas(bytes, w, h, (v) => { const g = invert ? 255 - v : v; return [g, g, g]; }, zoom);
}

function scaleLegend(signed, max) {
  const c = el("canvas", { width: 160, height: 1 });
  const ctx = c.getContext("2d"), img = ctx.createImageData(160, 1);
  for (let i = 0; i < 160; i++) {
    const t = i / 159;
    img.data.set([...(signed ? diverging(2 * t - 1) : greys(t)), 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return el("div", { class: "scale" }, el("span", {}, signed ? fmt(-max) : "0"), c, el("span", {}, fmt(max)), el("span", {}, signed ? "blue negative, white 0, red positive" : "white 0, black the largest"));
}

// ---------- the model tab ----------

function focusRun() { return state.runs.find((r) => r.id === state.focus); }
function modelFile() { return document.querySelector('input[name="model-file"]:checked').value; }

async function loadModel(run, file) {
  const key = `${run}|${file}`;
  if (state.model && state.model.key === key) return state.model;
  const info = await api("/api/model?" + q({ run, file }));
  info.key = key;
  info.kernelValues = Object.fromEntries(info.kernels.map((k) => [k.layer, { shape: k.shape, values: b64floats(k.data), bias: k.bias ? b64floats(k.bias) : null }]));
  state.model = info;
  return info;
}

async function renderModel() {
  const run = focusRun();
  $("model-error").hidden = true;
  if (!run) { $("model-run").textContent = "Click a run's name on the left."; return; }
  $("model-run").textContent = `${run.name} (${run.model || "?"} on ${run.dataset || "?"})`;
  const file = modelFile();
  if (!(file === "best" ? run.has_best : run.has_model)) {
    $("model-error").textContent = `This run has no ${file === "best" ? "best.safetensors" : "model.safetensors"} yet.`;
    $("model-error").hidden = false;
    for (const id of ["layer-table", "kernels", "confusion", "cell-images", "mistakes"]) $(id).replaceChildren();
    return;
  }
  let info;
  try { info = await loadModel(run.id, file); } catch (e) {
    $("model-error").textContent = e.message; $("model-error").hidden = false; return;
  }
  const t = $("layer-table");
  t.replaceChildren(...info.table.map((row, i) => el("tr", {}, ...row.map((c) => el(i === 0 ? "th" : "td", {}, c)))));
  const ks = $("kernels");
  ks.replaceChildren();
  for (const k of info.kernels) {
    const [o, c, kh, kw] = k.shape;
    const values = info.kernelValues[k.layer].values;
    const max = values.reduce((a, v) => Math.max(a, Math.abs(v)), 1e-12);
    const zoom = Math.max(3, Math.min(10, Math.floor(30 / kh)));
    const grid = el("div", { class: "grid", style: `grid-template-columns: repeat(${Math.min(c, 32)}, auto)`, "data-layer": k.layer });
    for (let i = 0; i < o; i++) for (let j = 0; j < Math.min(c, 32); j++) {
      const off = (i * c + j) * kh * kw;
      const cv = valueCanvas(values.subarray(off, off + kh * kw), kw, kh, (v) => diverging(v / max), zoom);
      cv.title = `${k.layer} output ${i}, input ${j}`;
      cv.classList.add("kernel");
      grid.append(cv);
    }
    ks.append(el("div", { class: "card" }, el("h4", {}, `${k.layer}: ${o} × ${c} kernels of ${kh}×${kw} (rows: output channels; columns: input channels${c > 32 ? ", the first 32" : ""})`), grid, scaleLegend(true, max)));
  }
  if (state.evaluation && state.evaluation.key === info.key) renderEvaluation(); else {
    for (const id of ["confusion", "cell-images", "mistakes"]) $(id).replaceChildren();
    $("eval-summary").textContent = "";
    $("cell-title").textContent = "";
  }
}

async function evaluate() {
  const run = focusRun();
  if (!run) return;
  const file = modelFile();
  $("eval-summary").textContent = "evaluating…";
  try {
    const e = await api("/api/evaluation?" + q({ run: run.id, file }));
    e.key = `${run.id}|${file}`;
    state.evaluation = e;
    renderEvaluation();
  } catch (err) { $("eval-summary").textContent = err.message; }
}

async function showImages(target, dataset, items, caption) {
  target.replaceChildren();
  if (items.length === 0) { target.append(el("p", { class: "hint" }, "none")); return; }
  const r = await api("/api/images?" + q({ dataset, indices: items.map((i) => i.index).join(",") }));
  r.images.forEach((img, k) => {
    const cv = greyCanvas(b64bytes(img.pixels), r.cols, r.rows, 2, false);
    target.append(el("figure", {}, cv, el("figcaption", {}, caption(items[k], img))));
  });
}

function renderEvaluation() {
  const e = state.evaluation;
  $("eval-summary").textContent = `${e.dataset} test: accuracy ${count(e.correct, e.total)}, loss ${e.loss.toFixed(4)}`;
  const k = e.classes.length;
  const max = Math.max(1, ...e.confusion.flatMap((row, i) => row.filter((_, j) => j !== i)));
  const table = el("table", {});
  table.append(el("tr", {}, el("th", {}, ""), ...e.classes.map((c) => el("th", { title: c }, c.length > 6 ? c.slice(0, 5) + "…" : c))));
  e.confusion.forEach((row, i) => {
    const tr = el("tr", {}, el("th", { title: e.classes[i] }, e.classes[i]));
    row.forEach((n, j) => {
      const diag = i === j;
      const t = diag ? 0.15 : Math.sqrt(n / max);
      const bg = diag ? "#d9e7d5" : `rgb(${Math.round(247 - 239 * t)},${Math.round(251 - 203 * t)},${Math.round(255 - 148 * t)})`;
      const td = el("td", { style: `background:${bg};color:${t > 0.6 ? "#fff" : "#111"}`, title: `true ${e.classes[i]}, predicted ${e.classes[j]}: ${n}`, "data-cell": `${i},${j}` }, n);
      td.addEventListener("click", () => {
        for (const s of table.querySelectorAll("td.sel")) s.classList.remove("sel");
        td.classList.add("sel");
        $("cell-title").textContent = `true ${e.classes[i]}, predicted ${e.classes[j]}: ${n} image${n === 1 ? "" : "s"}${n > e.cells[i][j].length ? ` (the first ${e.cells[i][j].length})` : ""}`;
        showImages($("cell-images"), e.dataset, e.cells[i][j].map((index) => ({ index })), (it) => `#${it.index}`);
      });
      tr.append(td);
    });
    table.append(tr);
  });
  $("confusion").replaceChildren(table);
  showImages($("mistakes"), e.dataset, e.mistakes, (m) => `#${m.index}: ${e.classes[m.label]} → ${e.classes[m.predicted]} ✗ ${(100 * m.probability).toFixed(1)}%`);
  void k;
}

// ---------- the draw tab ----------

function drawModels() {
  return state.runs.flatMap((r) => [
    ...(r.has_model ? [{ run: r.id, file: "model", label: `${r.name} (final)` }] : []),
    ...(r.has_best ? [{ run: r.id, file: "best", label: `${r.name} (best validation)` }] : []),
  ]);
}

function renderDrawModels() {
  const sel = $("draw-model");
  const current = sel.value;
  const options = drawModels();
  sel.replaceChildren(...options.map((o) => el("option", { value: `${o.run}|${o.file}` }, o.label)));
  if (options.length === 0) { sel.append(el("option", { value: "" }, "no trained model yet")); return; }
  const focus = options.find((o) => o.run === state.focus);
  sel.value = options.some((o) => `${o.run}|${o.file}` === current) ? current : focus ? `${focus.run}|${focus.file}` : `${options[options.length - 1].run}|${options[options.length - 1].file}`;
}

const pad = $("pad");
const pen = pad.getContext("2d");
function clearPad() {
  state.strokes = [];
  state.file = null;
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, pad.width, pad.height);
  $("prediction").textContent = "Draw a digit.";
  $("prediction").className = "prediction message";
  $("prediction").removeAttribute("data-label");
  for (const id of ["probs", "steps", "maps"]) $(id).replaceChildren();
  $("draw-server").textContent = "";
}
function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * pad.width / r.width, (ev.clientY - r.top) * pad.height / r.height];
}
let drawing = false;
pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  drawing = true;
  state.strokes.push([padPoint(ev)]);
  dot(padPoint(ev));
});
pad.addEventListener("pointermove", (ev) => {
  if (!drawing) return;
  ev.preventDefault();
  const s = state.strokes[state.strokes.length - 1], p = padPoint(ev), last = s[s.length - 1];
  s.push(p);
  pen.strokeStyle = "#000"; pen.lineWidth = 18; pen.lineCap = "round"; pen.lineJoin = "round";
  pen.beginPath(); pen.moveTo(last[0], last[1]); pen.lineTo(p[0], p[1]); pen.stroke();
});
const endStroke = (ev) => { if (!drawing) return; drawing = false; if (ev) ev.preventDefault(); classifyDrawing(); };
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);
function dot([x, y]) { pen.fillStyle = "#000"; pen.beginPath(); pen.arc(x, y, 9, 0, 2 * Math.PI); pen.fill(); }

function chosenModel() {
  const [run, file] = ($("draw-model").value || "|").split("|");
  return run ? { run, file } : null;
}

async function classifyDrawing() {
  if (state.strokes.every((s) => s.length === 0)) { clearPad(); $("prediction").textContent = "Draw a digit first."; return; }
  const body = JSON.stringify({ width: pad.width, height: pad.height, line: 18, strokes: state.strokes });
  await classify({ method: "POST", headers: { "Content-Type": "application/json" }, body });
}

async function classifyFile(file) {
  if (!file) return;
  clearPad();
  state.file = file;
  const img = new Image();
  img.onload = () => { const s = Math.min(pad.width / img.width, pad.height / img.height); pen.drawImage(img, (pad.width - img.width * s) / 2, (pad.height - img.height * s) / 2, img.width * s, img.height * s); URL.revokeObjectURL(img.src); };
  img.src = URL.createObjectURL(file);
  await classify({ method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file });
}

let pending = 0;
async function classify(request) {
  const m = chosenModel();
  if (!m) { $("prediction").textContent = "No trained model yet: train one, it appears here."; return; }
  const mine = ++pending;
  let r;
  try { r = await api("/api/draw?" + q(m), request); } catch (e) {
    if (mine !== pending) return;
    $("prediction").className = "prediction message";
    $("prediction").removeAttribute("data-label");
    $("prediction").textContent = e.message;
    for (const id of ["probs", "steps", "maps"]) $(id).replaceChildren();
    return;
  }
  if (mine !== pending) return;
  let info = null;
  try { info = await loadModel(m.run, m.file); } catch (_) { /* kernels are optional */ }
  renderPrediction(r);
  renderSteps(r.steps);
  renderMaps(r.maps, info);
  $("draw-server").textContent = `server: ${r.server_ms.toFixed(1)} ms`;
}

function renderPrediction(r) {
  const p = $("prediction");
  p.className = "prediction";
  p.setAttribute("data-label", String(r.label));
  p.textContent = `✓ ${r.class} (${(100 * r.probability).toFixed(1)}%)`;
  const probs = $("probs");
  probs.replaceChildren();
  r.probabilities.forEach((v, i) => {
    const top = i === r.label;
    const row = [el("span", {}, (top ? "✓ " : "") + r.classes[i]), el("div", { class: "bar" }, el("div", { style: `width:${(100 * v).toFixed(1)}%` })), el("span", { class: "pct" }, (100 * v).toFixed(1) + "%")];
    for (const c of row) { if (top) c.classList.add("top"); probs.append(c); }
  });
}

function renderSteps(s) {
  const box = $("steps");
  box.replaceChildren();
  const fig = (canvas, caption) => el("figure", {}, canvas, el("figcaption", {}, caption));
  const arrow = () => el("span", { class: "arrow" }, "→");
  // 1. The ink at the working size, with the box around what is kept.
  const ink = greyCanvas(b64bytes(s.ink.pixels), s.ink.w, s.ink.h, 1, true);
  const ctx = ink.getContext("2d");
  ctx.strokeStyle = "#dc2626";
  ctx.lineWidth = Math.max(1, s.ink.w / 140);
  ctx.strokeRect(s.box[0], s.box[1], s.box[2] - s.box[0], s.box[3] - s.box[1]);
  const shown = Math.min(140, s.ink.w);
  ink.style.width = `${shown}px`;
  ink.style.height = `${(shown * s.ink.h) / s.ink.w}px`;
  // 2. The box scaled to the digit size, on a square of that size.
  const side = Math.max(s.scaled.w, s.scaled.h), zoom = 5;
  const framed = new Uint8Array(side * side), px = b64bytes(s.scaled.pixels);
  const ox = Math.floor((side - s.scaled.w) / 2), oy = Math.floor((side - s.scaled.h) / 2);
  for (let y = 0; y < s.scaled.h; y++) for (let x = 0; x < s.scaled.w; x++) framed[(y + oy) * side + x + ox] = px[y * s.scaled.w + x];
  const scaled = greyCanvas(framed, side, side, zoom, false);
  // 3. Placed so the centre of mass is the canvas's centre (the cross).
  const fin = b64bytes(s.final.pixels);
  const placed = el("div", { class: "cross" }, greyCanvas(fin, s.final.w, s.final.h, zoom, false));
  const last = greyCanvas(fin, s.final.w, s.final.h, zoom, false);
  box.append(
    fig(ink, `1. the ink${s.inverted ? " (the background was light: inverted)" : ""} and its box`), arrow(),
    fig(scaled, `2. the box scaled to ${side} px`), arrow(),
    fig(placed, `3. centre of mass (${s.centre[0].toFixed(1)}, ${s.centre[1].toFixed(1)}) moved to the centre`), arrow(),
    fig(last, `4. the ${s.final.w}×${s.final.h} the network sees`));
}

// The conv layer whose kernels made layer `name`'s channels (itself, or the last conv
// before a ReLU, pool or batch norm).
function sourceConv(info, name) {
  if (!info) return null;
  const i = info.layers.findIndex((l) => l.name === name);
  for (let j = i; j >= 0; j--) {
    const l = info.layers[j];
    if (l.kind === "conv2d") return l.name;
    if (!["relu", "max_pool2d", "avg_pool2d", "batch_norm2d", "sigmoid", "tanh"].includes(l.kind)) return null;
  }
  return null;
}

function renderMaps(maps, info) {
  const box = $("maps");
  box.replaceChildren();
  for (const m of maps) {
    const [c, h, w] = m.shape;
    const values = b64floats(m.data);
    const max = m.max_abs || 1e-12;
    const colourOf = m.signed ? (v) => diverging(v / max) : (v) => greys(v / max);
    const zoom = Math.max(2, Math.min(10, Math.floor(72 / w)));
    const grid = el("div", { class: "maps", "data-layer": m.layer });
    for (let k = 0; k < c; k++) {
      const cv = valueCanvas(values.subarray(k * h * w, (k + 1) * h * w), w, h, colourOf, zoom);
      cv.classList.add("click", "map");
      cv.title = `${m.layer} channel ${k}`;
      cv.addEventListener("click", () => zoomMap(m, k, values.subarray(k * h * w, (k + 1) * h * w), colourOf, info));
      grid.append(cv);
    }
    box.append(el("div", { class: "card" }, el("h4", {}, `${m.layer} · ${m.kind} · ${c}×${h}×${w}`), grid, scaleLegend(m.signed, max)));
  }
}

function zoomMap(m, k, values, colourOf, info) {
  const [, h, w] = m.shape;
  const body = $("zoom-body");
  body.replaceChildren(el("h3", {}, `${m.layer}, channel ${k} (${m.kind}, ${h}×${w})`), valueCanvas(values, w, h, colourOf, Math.max(4, Math.floor(280 / w))), scaleLegend(m.signed, m.max_abs || 1));
  const conv = sourceConv(info, m.layer);
  if (conv && info.kernelValues[conv]) {
    const { shape, values: kv, bias } = info.kernelValues[conv];
    const [, cin, kh, kw] = shape;
    const kmax = kv.reduce((a, v) => Math.max(a, Math.abs(v)), 1e-12);
    const cards = el("div", { class: "cards" });
    for (let j = 0; j < Math.min(cin, 16); j++) {
      const off = (k * cin + j) * kh * kw, part = kv.subarray(off, off + kh * kw);
      const table = el("table", { class: "kernel-values" });
      for (let r = 0; r < kh; r++) table.append(el("tr", {}, ...Array.from(part.subarray(r * kw, (r + 1) * kw), (v) => el("td", {}, v.toFixed(3)))));
      cards.append(el("div", {}, el("div", { class: "muted" }, `input channel ${j}`), valueCanvas(part, kw, kh, (v) => diverging(v / kmax), Math.max(8, Math.floor(72 / kw))), table));
    }
    const how = conv === m.layer ? "" : ` (${m.layer} is ${m.kind} applied to ${conv}'s channel ${k})`;
    const b = bias ? ` plus the bias ${bias[k].toFixed(3)}` : "";
    const more = cin > 16 ? ` (the first 16 of ${cin} input channels)` : "";
    body.append(el("p", {}, `The kernel of ${conv}'s output channel ${k}${how}: each value of the map is the sum, over input channels, of this kernel times the window of the input under it,${b || " (no bias)"}.${more}`), cards, scaleLegend(true, kmax));
  }
  $("zoom").hidden = false;
}

// ---------- tabs and controls ----------

function showTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  for (const t of ["curves", "sweep", "model", "draw"]) $(`tab-${t}`).hidden = t !== tab;
  if (tab === "curves") renderCurves();
  if (tab === "sweep") renderSweep().catch((e) => { $("sweep-title").textContent = e.message; });
  if (tab === "model") renderModel();
  if (tab === "draw") { renderDrawModels(); classifyAgain(); }
  if (location.hash !== `#${tab}`) history.pushState(null, "", `#${tab}`);
}

for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
$("log-scale").addEventListener("change", renderCurves);
$("smoothing").addEventListener("input", () => { $("smoothing-value").textContent = Number($("smoothing").value).toFixed(2); renderCurves(); });
for (const r of document.querySelectorAll('input[name="model-file"]')) r.addEventListener("change", renderModel);
$("evaluate").addEventListener("click", evaluate);
$("clear").addEventListener("click", clearPad);
$("upload").addEventListener("change", (e) => classifyFile(e.target.files[0]));
// Another model answers the same drawing or image.
const classifyAgain = () => { if (state.strokes.length) classifyDrawing(); else if (state.file) classifyFile(state.file); };
$("draw-model").addEventListener("change", classifyAgain);
pad.addEventListener("dragover", (e) => { e.preventDefault(); pad.classList.add("dragging"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dragging"));
pad.addEventListener("drop", (e) => { e.preventDefault(); pad.classList.remove("dragging"); classifyFile(e.dataTransfer.files[0]); });
$("zoom-close").addEventListener("click", () => { $("zoom").hidden = true; });
$("zoom").addEventListener("click", (e) => { if (e.target === $("zoom")) $("zoom").hidden = true; });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("zoom").hidden = true; });
// The tab is in the address (#draw): links, reloads and the back button keep it.
const TABS = ["curves", "sweep", "model", "draw"];
const hashTab = () => { const t = (location.hash || "#curves").slice(1); return TABS.includes(t) ? t : "curves"; };
window.addEventListener("hashchange", () => { if (hashTab() !== state.tab) showTab(hashTab()); });

clearPad();
showTab(hashTab());
loadRuns().then(() => showTab(state.tab)).catch((e) => { $("roots").textContent = e.message; });
connect();
