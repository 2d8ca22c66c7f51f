// qmp-server dashboard: plain JavaScript, no build step, no third-party code.
// Data: GET /api/v1/{status,capabilities,parameters,migration} and the SSE stream
// /api/v1/events; mutations (PATCH, and POST /api/v1/qmp/... for the postcopy controls)
// carry the bearer token typed into the header form.  In a fleet the same page is one VM's,
// under /api/v1/vms/NAME/ (common.js's url() maps the paths).  Helpers: common.js.
"use strict";

const state = {
  writable: false,
  migrationStatus: "none",
  samples: [],          // {t, remaining, dirty, rate, pass}
  passMarks: [],        // {t, pass}
  lastTotalTime: null,
  pollTimer: null,
  lastEventId: 0,       // the server's last event id when the page opened (/healthz)
};
const ACTIVE = new Set(["setup", "active", "postcopy-active", "postcopy-paused",
  "postcopy-recover", "postcopy-recover-setup", "pre-switchover", "device", "cancelling",
  "wait-unplug", "colo"]);
const POSTCOPY = new Set(["postcopy-active", "postcopy-paused", "postcopy-recover-setup",
  "postcopy-recover"]);
const MAX_SAMPLES = 600;
const MAX_LOG = 300;

function showError(id, err) {
  const el = $(id);
  if (err) {
    el.textContent = (err.errorClass ? err.errorClass + ": " : "") + err.message;
    el.hidden = false;
  } else {
    el.hidden = true;
  }
}

// -- status, capabilities, parameters --------------------------------------------------
async function loadStatus() {
  try {
    const status = await api("/api/v1/status");
    setBadge($("runstate"), status.status);
  } catch (err) {
    setBadge($("runstate"), "error");
  }
}

function canWrite() { return state.writable && session.token !== ""; }

async function loadCapabilities() {
  let caps;
  try {
    caps = await api("/api/v1/capabilities");
    showError("caps-error", null);
  } catch (err) {
    showError("caps-error", err);
    return;
  }
  const tbody = $("caps").tBodies[0];
  tbody.replaceChildren();
  for (const cap of caps) {
    const row = tbody.insertRow();
    row.dataset.capability = cap.capability;
    row.insertCell().textContent = cap.capability;
    const cell = row.insertCell();
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = cap.state;
    box.disabled = !canWrite();
    box.title = canWrite() ? "toggle" : "read-only (no token)";
    box.setAttribute("aria-label", cap.capability);
    box.addEventListener("change", () => setCapability(cap.capability, box.checked));
    cell.append(box, document.createTextNode(cap.state ? " on" : " off"));
  }
}

async function setCapability(name, on) {
  try {
    await api("/api/v1/capabilities", {
      method: "PATCH",
      body: JSON.stringify({ capabilities: [{ capability: name, state: on }] }),
    });
    showError("caps-error", null);
  } catch (err) {
    showError("caps-error", err);
  }
  await loadCapabilities();
}

async function loadParameters() {
  let params;
  try {
    params = await api("/api/v1/parameters");
    showError("params-error", null);
  } catch (err) {
    showError("params-error", err);
    return;
  }
  const tbody = $("params").tBodies[0];
  tbody.replaceChildren();
  for (const [name, value] of Object.entries(params)) {
    const row = tbody.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell();
    if (canWrite() && (typeof value === "number" || typeof value === "string" ||
                       typeof value === "boolean")) {
      const input = document.createElement("input");
      if (typeof value === "boolean") { input.type = "checkbox"; input.checked = value; }
      else { input.type = typeof value === "number" ? "number" : "text"; input.value = value; }
      input.setAttribute("aria-label", name);
      input.addEventListener("change", () => {
        let v = input.value;
        if (typeof value === "boolean") v = input.checked;
        else if (typeof value === "number") v = Number(input.value);
        setParameter(name, v);
      });
      cell.append(input);
    } else {
      cell.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    }
  }
}

async function setParameter(name, value) {
  try {
    await api("/api/v1/parameters", { method: "PATCH", body: JSON.stringify({ [name]: value }) });
    showError("params-error", null);
  } catch (err) {
    showError("params-error", err);
  }
  await loadParameters();
}

// -- migration ---------------------------------------------------------------------------
function resetSeries() {
  state.samples = [];
  state.passMarks = [];
}

async function loadMigration() {
  let answer;
  try {
    answer = await api("/api/v1/migration");
  } catch (err) {
    return;
  }
  const info = answer.info || {};
  const d = answer.derived || {};
  const ram = info.ram || {};
  const previous = state.migrationStatus;
  state.migrationStatus = d.status;
  if (d.status === "setup" && previous !== "setup") resetSeries();
  if (typeof info["total-time"] === "number" && state.lastTotalTime !== null &&
      info["total-time"] < state.lastTotalTime) {
    resetSeries();  // a new migration started between two polls
  }
  if (typeof info["total-time"] === "number") state.lastTotalTime = info["total-time"];

  setBadge($("mig-status"), d.status);
  setBadge($("ack"), d["switchover-ack"]);
  $("iteration").textContent = d.iteration === null ? "–" : String(d.iteration);
  const pct = d["progress-percent"];
  const bar = $("progress");
  bar.dataset.state = d.status;
  bar.setAttribute("aria-valuenow", pct === null ? "0" : pct.toFixed(1));
  $("progress-fill").style.width = (pct === null ? 0 : pct) + "%";
  $("progress-text").textContent = pct === null ? "–" : pct.toFixed(1) + " %";
  $("processed").textContent = fmtBytes(ram.transferred);
  $("remaining").textContent = fmtBytes(d["remaining-bytes"]);
  $("total").textContent = fmtBytes(d["total-bytes"]);
  $("bandwidth").textContent = fmtRate(d["transfer-rate-bytes"]);
  $("dirty").textContent = fmtRate(d["dirty-rate-bytes"]);
  $("eta").textContent = fmtSeconds(d["eta-seconds"]);
  $("expected-downtime").textContent = fmtMs(d["expected-downtime-ms"]);
  $("downtime").textContent = d.status === "completed" ? fmtMs(d["downtime-ms"]) : "–";
  $("total-time").textContent = info["total-time"] === undefined ? "–"
    : fmtSeconds(info["total-time"] / 1000);
  const errorDesc = info["error-desc"];
  $("mig-error").hidden = !errorDesc;
  $("mig-error").textContent = errorDesc || "";
  showPostcopy(info, d);

  if (info.ram && ACTIVE.has(d.status)) {
    state.samples.push({
      t: performance.now() / 1000,
      remaining: d["remaining-bytes"],
      dirty: d["dirty-rate-bytes"],
      rate: d["transfer-rate-bytes"],
      pass: d.iteration,
    });
    if (state.samples.length > MAX_SAMPLES) state.samples.shift();
  }
  drawPlots();
  schedulePoll();
}

// -- postcopy: counters, blocktime, and the controls ----------------------------------------
// The source's query-migrate has "ram"; the destination's has none (only its socket address
// while incoming, and the blocktime once completed).
function showPostcopy(info, d) {
  const blocktime = d["postcopy-blocktime-ms"];
  $("postcopy").hidden = !d.postcopy && blocktime === null;
  $("postcopy-bytes").textContent = fmtBytes(d["postcopy-bytes"]);
  $("postcopy-requests").textContent = d["postcopy-requests"] === null ? "–"
    : String(d["postcopy-requests"]);
  $("blocktime").textContent = fmtMs(blocktime);
  const perVcpu = d["postcopy-vcpu-blocktime-ms"];
  $("vcpu-blocktime").textContent = perVcpu ? perVcpu.map((v) => v + " ms").join(", ") : "–";
  const source = info.ram !== undefined;
  const hint = $("postcopy-hint");
  hint.hidden = d.status !== "postcopy-paused";
  hint.textContent = source
    ? "Paused: once the destination listens (migrate-recover URI), resume here with migrate " +
      "{uri: URI, resume: true}."
    : "Paused: listen for the source again with migrate-recover URI (in QEMU send it as " +
      "exec-oob: this monitor may not answer in-band now), then resume on the source.";
  const write = canWrite();
  $("controls").hidden = !write || !(d.status === "active" || POSTCOPY.has(d.status));
  $("start-postcopy").hidden = !(source && d.status === "active");
  $("pause-postcopy").hidden = !(d.status === "postcopy-active" || d.status === "postcopy-recover");
  $("recover-form").hidden = d.status !== "postcopy-paused";
  $("recover").textContent = source ? "resume (migrate resume)" : "listen (migrate-recover)";
  $("recover-form").dataset.role = source ? "source" : "destination";
}

async function control(command, args) {
  try {
    await api("/api/v1/qmp/" + command, { method: "POST", body: JSON.stringify(args || {}) });
    showError("control-error", null);
  } catch (err) {
    showError("control-error", err);
  }
  loadMigration();
}

function setupControls() {
  $("start-postcopy").addEventListener("click", () => control("migrate-start-postcopy"));
  $("pause-postcopy").addEventListener("click", () => control("migrate-pause"));
  $("recover-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const uri = $("recover-uri").value.trim();
    if ($("recover-form").dataset.role === "source") control("migrate", { uri, resume: true });
    else control("migrate-recover", { uri });
  });
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  const delay = ACTIVE.has(state.migrationStatus) ? 500 : 3000;
  state.pollTimer = setTimeout(loadMigration, delay);
}

// -- plots: one canvas per series, pass boundaries as vertical lines -----------------------
function drawPlot(canvasId, key, color) {
  const canvas = $(canvasId);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 46, bottom = 16, top = 6, right = 6;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "10px sans-serif";
  ctx.fillStyle = "#6a7385";
  const points = state.samples.filter((s) => typeof s[key] === "number");
  if (points.length === 0) {
    ctx.fillText("no data yet", w / 2 - 25, h / 2);
    return;
  }
  const t0 = points[0].t, t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const vmax = Math.max(1, ...points.map((p) => p[key]));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (w - left - right);
  const y = (v) => h - bottom - (v / vmax) * (h - bottom - top);
  ctx.strokeStyle = "#d9dee7";
  ctx.beginPath();
  ctx.moveTo(left, top); ctx.lineTo(left, h - bottom); ctx.lineTo(w - right, h - bottom);
  ctx.stroke();
  ctx.fillText(fmtBytes(vmax).replace(" ", ""), 2, top + 8);
  ctx.fillText("0", left - 10, h - bottom);
  ctx.fillText((t1 - t0).toFixed(0) + " s", w - right - 24, h - 3);
  // pass boundaries
  ctx.strokeStyle = "#e3b341";
  ctx.fillStyle = "#b7791f";
  let lastPass = null;
  for (const p of points) {
    if (p.pass !== null && p.pass !== lastPass) {
      if (lastPass !== null) {
        ctx.beginPath(); ctx.moveTo(x(p.t), top); ctx.lineTo(x(p.t), h - bottom); ctx.stroke();
        ctx.fillText(String(p.pass), x(p.t) + 2, top + 8);
      }
      lastPass = p.pass;
    }
  }
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[key])) : ctx.moveTo(x(p.t), y(p[key]))));
  ctx.stroke();
  ctx.lineWidth = 1;
}

function drawPlots() {
  drawPlot("plot-remaining", "remaining", "#2f6fd6");
  drawPlot("plot-dirty", "dirty", "#c0392b");
  drawPlot("plot-bandwidth", "rate", "#1f8a4c");
}

// -- events ---------------------------------------------------------------------------------
function onQmpEvent(message) {
  const payload = JSON.parse(message.data);
  logEvent("events", message.type, payload, message.lastEventId, MAX_LOG);
  switch (message.type) {
    case "STOP": case "RESUME": case "SHUTDOWN":
      loadStatus(); break;
    case "MIGRATION":
      if (payload.data && payload.data.status === "setup") resetSeries();
      loadMigration(); loadStatus();
      // Parameters and capabilities change without events: re-read them at each transition.
      loadParameters(); loadCapabilities(); break;
    case "MIGRATION_PASS":
      loadMigration(); break;
    default: break;
  }
}

async function connectEvents() {
  let names = ["SHUTDOWN", "STOP", "RESUME", "MIGRATION", "MIGRATION_PASS"];
  try {
    const schema = await api("/api/v1/schema");
    const declared = schema.filter((e) => e["meta-type"] === "event").map((e) => e.name);
    if (declared.length) names = Array.from(new Set([...names, ...declared]));
  } catch (err) { /* keep the defaults */ }
  // A page that opens late still shows what happened: replay the recent history (the last
  // MAX_LOG events the server keeps), then follow live; a reconnect resumes by Last-Event-ID.
  const since = Math.max(0, state.lastEventId - MAX_LOG);
  const source = new EventSource(url("/api/v1/events?last_event_id=" + since));
  source.addEventListener("hello", () => setBadge($("conn"), "open"));
  source.addEventListener("gap", (m) => logEvent("events", "gap", { data: JSON.parse(m.data) }, null, MAX_LOG));
  for (const name of names) source.addEventListener(name, onQmpEvent);
  source.onerror = () => setBadge($("conn"), source.readyState === 2 ? "closed" : "connecting");
}

// -- start ------------------------------------------------------------------------------------
async function start() {
  if (VM_BASE) {  // one VM of a fleet: name it, and link back to the fleet's page
    $("vm-name").textContent = decodeURIComponent(VM_BASE.split("/").pop());
    $("vm-name").hidden = false;
    $("fleet-link").hidden = false;
  }
  try {
    const health = await api("/healthz");
    state.writable = health.writable;
    state.lastEventId = Number(health["events-last-id"]) || 0;
    const v = health.version.qemu;
    $("version").textContent = "QEMU " + v.major + "." + v.minor + "." + v.micro +
      (health.version.package ? " " + health.version.package : "");
  } catch (err) { /* the page still shows what it can */ }
  $("mode").textContent = state.writable ? (session.token ? "token set" : "read-only until a token is given")
    : "read-only mirror";
  const form = $("token-form");
  form.hidden = !state.writable;
  $("token").value = session.token;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    session.token = $("token").value.trim();
    sessionStorage.setItem("qmp-server-token", session.token);
    $("mode").textContent = session.token ? "token set" : "read-only until a token is given";
    loadCapabilities();
    loadParameters();
  });
  setupControls();
  await Promise.all([loadStatus(), loadCapabilities(), loadParameters(), loadMigration()]);
  connectEvents();
  // Changes made by other clients raise no event: re-read the settings now and then, unless
  // the user is editing one.
  setInterval(() => {
    const editing = document.activeElement && document.activeElement.closest("#params, #caps");
    if (!editing) { loadParameters(); loadCapabilities(); }
  }, 10000);
}

document.addEventListener("DOMContentLoaded", start);
