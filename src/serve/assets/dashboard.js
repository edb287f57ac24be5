// tripload dashboard: live ingestion from /api/events (EventSource), the
// density map from /api/cells, weekly counts and groups for a region or a box.
// Plain JavaScript, no dependencies, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
const n = (v) => (v === null || v === undefined ? "" : fmt.format(v));

// The token, when the server needs one: given once as /#token=..., kept for
// the tab (and taken out of the address bar).
const token = (() => {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has("token")) {
    sessionStorage.setItem("tripload-token", h.get("token"));
    h.delete("token");
    history.replaceState(null, "", location.pathname + (h.toString() ? "#" + h : ""));
  }
  return sessionStorage.getItem("tripload-token");
})();

// The file a link asks for (/#file=NAME, as the mailed reports link): its
// rows are highlighted in every table.
let focusFile = null;
function readFocus() {
  focusFile = new URLSearchParams(location.hash.slice(1)).get("file");
  const note = $("focus-note");
  note.hidden = !focusFile;
  $("focus-name").textContent = focusFile || "";
  markFocus(true);
}

function markFocus(scroll) {
  let first = null;
  for (const row of document.querySelectorAll("tr[data-file]")) {
    const on = focusFile !== null && row.dataset.file === focusFile;
    row.classList.toggle("focus", on);
    if (on && !first) first = row;
  }
  if (scroll && first) first.scrollIntoView({ block: "center" });
}

function showError(msg) {
  const e = $("error");
  e.textContent = msg;
  e.hidden = !msg;
  if (msg) setTimeout(() => { if (e.textContent === msg) e.hidden = true; }, 8000);
}

async function api(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const r = await fetch(path, { headers });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) {
    if (r.status === 401) $("auth-note").textContent = "this server needs a token: open /#token=YOUR_TOKEN";
    throw new Error(body.error || r.statusText);
  }
  return body;
}

function td(text, cls) {
  const c = document.createElement("td");
  c.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) c.className = cls;
  return c;
}

// ---- live ingestion -------------------------------------------------------

const inflight = new Map(); // file -> {started, size, done, rows, row}
const TERMINAL = new Set(["committed", "failed", "skipped", "released", "refused", "quarantined"]);

function renderInflight(file) {
  const f = inflight.get(file);
  if (!f.row) {
    f.row = document.createElement("tr");
    f.row.dataset.file = file;
    $("inflight").tBodies[0].appendChild(f.row);
  }
  const pct = f.size ? Math.min(100, (100 * (f.done || 0)) / f.size) : 0;
  const secs = f.startedAt ? (Date.now() - f.startedAt) / 1000 : 0;
  const rate = secs > 0 && f.rows ? f.rows / secs : 0;
  const bps = secs > 0 && f.done ? f.done / secs : 0;
  const eta = bps > 0 && f.size ? Math.max(0, (f.size - f.done) / bps) : null;
  f.row.replaceChildren(
    td(file),
    td(f.state, "st-" + f.state),
    (() => {
      const c = document.createElement("td");
      c.innerHTML = '<div class="bar"><span></span><em></em></div>';
      c.querySelector("span").style.width = pct.toFixed(1) + "%";
      c.querySelector("em").textContent = f.size ? pct.toFixed(0) + "% of " + n(f.size) + " bytes" : "";
      c.querySelector(".bar").dataset.pct = pct.toFixed(1);
      return c;
    })(),
    td(n(f.rows), "num rows"),
    td(rate ? n(Math.round(rate)) : "", "num"),
    td(eta === null ? "" : eta.toFixed(0) + " s", "num")
  );
  $("inflight-empty").hidden = inflight.size > 0;
  markFocus(false);
}

function addOutcome(e) {
  const row = document.createElement("tr");
  row.dataset.file = e.file;
  row.append(
    td((e.at || "").replace("T", " ").replace(/\.\d+Z$/, "")),
    td(e.file),
    td(e.event, "st-" + e.event + " outcome"),
    td(n(e.rows), "num rows"),
    td(n(e.rows_rejected), "num"),
    td(e.seconds === undefined ? "" : e.seconds.toFixed(2), "num"),
    td(e.reason || "", "reason")
  );
  const body = $("outcomes").tBodies[0];
  body.insertBefore(row, body.firstChild);
  while (body.rows.length > 30) body.deleteRow(body.rows.length - 1);
  markFocus(e.file === focusFile);
}

function onEvent(e) {
  if (TERMINAL.has(e.event)) {
    const f = inflight.get(e.file);
    if (f && f.row) f.row.remove();
    inflight.delete(e.file);
    $("inflight-empty").hidden = inflight.size > 0;
    addOutcome(e);
    if (e.event === "committed") scheduleRefresh();
    return;
  }
  const f = inflight.get(e.file) || { state: e.event };
  f.state = e.event;
  if (e.event === "started") f.startedAt = Date.parse(e.at) || Date.now();
  if (!f.startedAt) f.startedAt = Date.parse(e.at) || Date.now();
  if (e.size_bytes !== undefined) f.size = e.size_bytes;
  if (e.bytes_done !== undefined) f.done = e.bytes_done;
  if (e.rows !== undefined) f.rows = e.rows;
  inflight.set(e.file, f);
  renderInflight(e.file);
}

function connectEvents() {
  const url = "/api/events?catch_up=50" + (token ? "&token=" + encodeURIComponent(token) : "");
  const es = new EventSource(url);
  es.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill on"; };
  es.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "pill off"; };
  es.onmessage = (m) => {
    try { onEvent(JSON.parse(m.data)); } catch (err) { showError("bad event: " + err.message); }
  };
}

let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { loadFiles(); loadCells(); }, 800);
}

async function loadFiles() {
  try {
    const { files } = await api("/api/files?limit=20");
    const body = $("files").tBodies[0];
    body.replaceChildren(...files.map((f) => {
      const r = document.createElement("tr");
      r.dataset.file = f.file;
      r.append(
        td((f.committed_at || "").replace("T", " ").replace(/\.\d+Z$/, "")),
        td(f.file),
        td(n(f.rows_loaded), "num"),
        td(n(f.rows_rejected), "num"),
        td(f.seconds === null ? "" : f.seconds.toFixed(2), "num"),
        td(n(f.rows_per_second), "num"),
        td(f.rejects_file || "", "muted")
      );
      return r;
    }));
    markFocus(files.some((f) => f.file === focusFile));
  } catch (err) { showError(err.message); }
}

// ---- map ------------------------------------------------------------------

const map = { cells: [], deg: 0.01, view: null, box: null, drag: null };

function canvasPoint(canvas, ev) {
  const r = canvas.getBoundingClientRect();
  return [((ev.clientX - r.left) * canvas.width) / r.width, ((ev.clientY - r.top) * canvas.height) / r.height];
}

// Lon/lat <-> canvas pixels for the current view (equirectangular, scaled by
// cos(latitude) so that cells look square near the view's centre).
function projector(canvas) {
  const v = map.view;
  const k = Math.cos((((v[1] + v[3]) / 2) * Math.PI) / 180);
  const w = (v[2] - v[0]) * k, h = v[3] - v[1];
  const s = Math.min(canvas.width / w, canvas.height / h);
  const ox = (canvas.width - w * s) / 2, oy = (canvas.height - h * s) / 2;
  return {
    x: (lon) => ox + (lon - v[0]) * k * s,
    y: (lat) => canvas.height - oy - (lat - v[1]) * s,
    lon: (x) => v[0] + (x - ox) / (k * s),
    lat: (y) => v[1] + (canvas.height - oy - y) / s,
  };
}

function fitView() {
  if (!map.cells.length) { map.view = [-10, 35, 30, 60]; return; }
  let a = Infinity, b = Infinity, c = -Infinity, d = -Infinity;
  for (const [ix, iy] of map.cells) {
    a = Math.min(a, ix); b = Math.min(b, iy); c = Math.max(c, ix + 1); d = Math.max(d, iy + 1);
  }
  const pad = 2;
  map.view = [(a - pad) * map.deg, (b - pad) * map.deg, (c + pad) * map.deg, (d + pad) * map.deg];
}

function drawMap() {
  const canvas = $("map"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!map.view) fitView();
  const p = projector(canvas);
  let max = 1;
  for (const c of map.cells) max = Math.max(max, c[2]);
  const lmax = Math.log(max + 1);
  for (const [ix, iy, t] of map.cells) {
    const x0 = p.x(ix * map.deg), x1 = p.x((ix + 1) * map.deg);
    const y0 = p.y((iy + 1) * map.deg), y1 = p.y(iy * map.deg);
    if (x1 < 0 || x0 > canvas.width || y1 < 0 || y0 > canvas.height) continue;
    const q = Math.log(t + 1) / lmax;
    g.fillStyle = `hsl(${220 - 200 * q}, 85%, ${62 - 22 * q}%)`;
    g.fillRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
  }
  const box = map.drag ? map.drag : map.box;
  if (box) {
    g.strokeStyle = "#cf222e"; g.lineWidth = 2; g.setLineDash([6, 3]);
    const x0 = p.x(box[0]), y0 = p.y(box[3]);
    g.strokeRect(x0, y0, p.x(box[2]) - x0, p.y(box[1]) - y0);
    g.setLineDash([]);
  }
  g.fillStyle = "#57606a"; g.font = "12px system-ui";
  const v = map.view;
  g.fillText(`${v[0].toFixed(3)}, ${v[1].toFixed(3)} … ${v[2].toFixed(3)}, ${v[3].toFixed(3)}  ·  ${n(map.cells.length)} cells of ${map.deg}°`, 8, canvas.height - 8);
}

async function loadCells() {
  const by = $("by").value === "destination" ? "destination" : "origin";
  const q = new URLSearchParams({ by });
  if ($("from").value) q.set("from", $("from").value);
  if ($("to").value) q.set("to", $("to").value);
  try {
    const r = await api("/api/cells?" + q);
    const first = !map.cells.length;
    map.cells = r.cells; map.deg = r.cell_deg;
    if (first || !map.view) fitView();
    drawMap();
  } catch (err) { showError(err.message); }
}

function setupMap() {
  const canvas = $("map");
  canvas.addEventListener("mousedown", (ev) => {
    const p = projector(canvas), [x, y] = canvasPoint(canvas, ev);
    map.start = [p.lon(x), p.lat(y)];
    map.drag = null;
  });
  canvas.addEventListener("mousemove", (ev) => {
    if (!map.start) return;
    const p = projector(canvas), [x, y] = canvasPoint(canvas, ev);
    const lon = p.lon(x), lat = p.lat(y);
    map.drag = [Math.min(lon, map.start[0]), Math.min(lat, map.start[1]), Math.max(lon, map.start[0]), Math.max(lat, map.start[1])];
    drawMap();
  });
  window.addEventListener("mouseup", () => {
    if (!map.start) return;
    map.start = null;
    if (map.drag && map.drag[2] - map.drag[0] > 1e-6 && map.drag[3] - map.drag[1] > 1e-6) {
      map.box = map.drag.map((v) => Math.round(v * 1e5) / 1e5);
      $("mode").value = "bbox";
      runQuery();
    }
    map.drag = null;
    drawMap();
  });
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const p = projector(canvas), [x, y] = canvasPoint(canvas, ev);
    const lon = p.lon(x), lat = p.lat(y), f = ev.deltaY > 0 ? 1.25 : 0.8, v = map.view;
    map.view = [lon - (lon - v[0]) * f, lat - (lat - v[1]) * f, lon + (v[2] - lon) * f, lat + (v[3] - lat) * f];
    drawMap();
  }, { passive: false });
  $("fit").addEventListener("click", () => { fitView(); drawMap(); });
  $("zoom-box").addEventListener("click", () => {
    if (!map.box) return;
    const b = map.box, px = (b[2] - b[0]) * 0.2, py = (b[3] - b[1]) * 0.2;
    map.view = [b[0] - px, b[1] - py, b[2] + px, b[3] + py];
    drawMap();
  });
}

// ---- weekly and groups ------------------------------------------------------

function areaParams() {
  const q = new URLSearchParams();
  if ($("mode").value === "region") {
    if (!$("region").value.trim()) throw new Error("type a region name");
    q.set("region", $("region").value.trim());
  } else {
    if (!map.box) throw new Error("draw a box on the map first");
    q.set("bbox", map.box.join(","));
    q.set("by", $("by").value);
  }
  return q;
}

function drawWeekly(weeks, avg) {
  const canvas = $("weekly"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  if (!weeks.length) return;
  const left = 56, bottom = 28, top = 10, w = canvas.width - left - 10, h = canvas.height - bottom - top;
  const max = Math.max(1, ...weeks.map((x) => x.trips));
  const bw = w / weeks.length;
  g.font = "11px system-ui"; g.fillStyle = "#57606a";
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4, y = top + h - (h * i) / 4;
    g.fillText(fmt.format(Math.round(v)), 4, y + 4);
    g.fillRect(left, y, w, 0.5);
  }
  g.fillStyle = "#0969da";
  weeks.forEach((x, i) => {
    const bh = (h * x.trips) / max;
    g.fillRect(left + i * bw + bw * 0.1, top + h - bh, Math.max(1, bw * 0.8), bh);
  });
  g.fillStyle = "#57606a";
  const step = Math.max(1, Math.ceil(weeks.length / 10));
  weeks.forEach((x, i) => { if (i % step === 0) g.fillText(x.week, left + i * bw, canvas.height - 8); });
  const ay = top + h - (h * avg) / max;
  g.strokeStyle = "#cf222e"; g.setLineDash([5, 4]); g.beginPath(); g.moveTo(left, ay); g.lineTo(left + w, ay); g.stroke(); g.setLineDash([]);
  g.fillStyle = "#cf222e"; g.fillText("average", left + w - 48, ay - 4);
}

const regionsSeen = new Set();

async function runQuery() {
  let q;
  try { q = areaParams(); } catch (err) { showError(err.message); return; }
  const wq = new URLSearchParams(q);
  if ($("from").value) wq.set("from", $("from").value);
  if ($("to").value) wq.set("to", $("to").value);
  $("bbox-text").textContent = map.box ? "Box: " + map.box.join(", ") : "";
  try {
    const r = await api("/api/weekly?" + wq);
    $("area").textContent = r.area;
    $("avg").textContent = r.weekly_average.toFixed(3);
    $("avg").dataset.value = String(r.weekly_average);
    $("avg-note").textContent = `trips over ${r.week_count} weeks (${n(r.total_trips)} trips)`;
    drawWeekly(r.weeks, r.weekly_average);
  } catch (err) { showError(err.message); }
  try {
    const r = await api("/api/groups?" + q + "&top=20");
    $("groups").tBodies[0].replaceChildren(...r.groups.map((gr) => {
      const row = document.createElement("tr");
      const [h, m] = gr.bucket_start.split(":").map(Number);
      const end = new Date(Date.UTC(2000, 0, 1, h, m + r.bucket_minutes)).toISOString().slice(11, 16);
      const corner = (c) => c.map((v) => v.toFixed(3)).join(" ");
      if (!regionsSeen.has(gr.region)) {
        regionsSeen.add(gr.region);
        const o = document.createElement("option"); o.value = gr.region; $("regions").appendChild(o);
      }
      row.append(td(n(gr.trips), "num"), td(gr.region), td(corner(gr.origin_corner)), td(corner(gr.destination_corner)),
        td(gr.bucket_start + "–" + end), td(gr.first_at), td(gr.last_at), td(gr.datasources.join(" ")));
      return row;
    }));
  } catch (err) { showError(err.message); }
}

function setupForm() {
  $("query").addEventListener("submit", (ev) => { ev.preventDefault(); runQuery(); });
  $("mode").addEventListener("change", () => { $("region-label").style.opacity = $("mode").value === "region" ? 1 : 0.5; });
  $("region").addEventListener("input", () => { $("mode").value = "region"; });
  for (const id of ["by", "from", "to"]) $(id).addEventListener("change", loadCells);
}

window.addEventListener("hashchange", readFocus);
$("focus-clear").addEventListener("click", (ev) => {
  ev.preventDefault();
  history.replaceState(null, "", location.pathname);
  readFocus();
});
readFocus();
setupMap();
setupForm();
connectEvents();
loadFiles();
loadCells();
