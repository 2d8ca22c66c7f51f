// qmp-server fleet dashboard: plain JavaScript, no build step, no third-party code.
// Data: GET /api/v1/vms (the grid), GET /api/v1/migrations (migrations and the link), the SSE
// stream /api/v1/events (every VM's events tagged with its name; recent history first).
// Helpers: common.js.
"use strict";

const fleet = {
  lastEventId: 0,
  listTimer: null,
  migTimer: null,
  inFlight: false,
};
const MAX_LOG = 300;
const COMPACT_AT = 120;   // more VMs than this: compact tiles
const ENDED = new Set(["none", "completed", "failed", "cancelled"]);
const LEGEND = ["running", "paused", "inmigrate", "postmigrate", "prelaunch", "shutdown"];
const FLEET_EVENTS = ["FLEET_VM_ADDED", "FLEET_VM_REMOVED"];
const DEFAULT_EVENTS = ["SHUTDOWN", "STOP", "RESUME", "MIGRATION", "MIGRATION_PASS"];

// -- the grid: one tile per VM, updated in place (a fleet has up to a thousand) ---------------
function tile(vm) {
  const a = document.createElement("a");
  a.className = "vm";
  a.dataset.vm = vm.name;
  a.href = "/api/v1/vms/" + encodeURIComponent(vm.name) + "/";
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = vm.name;
  const state = document.createElement("span");
  state.className = "state";
  a.append(name, state);
  return a;
}

function renderGrid(vms) {
  const grid = $("grid");
  const existing = new Map(Array.from(grid.children, (el) => [el.dataset.vm, el]));
  let previous = null;
  for (const vm of vms) {
    let el = existing.get(vm.name);
    existing.delete(vm.name);
    if (!el) el = tile(vm);
    const migrating = !ENDED.has(vm.migration) || !ENDED.has(vm.incoming);
    el.dataset.state = vm.status;
    el.dataset.migrating = String(migrating);
    el.title = vm.name + ": " + vm.status + ", migration " + vm.migration +
      ", incoming " + vm.incoming + (vm.monitors.length ? "\n" + vm.monitors.join("\n") : "");
    const state = el.querySelector(".state");
    const text = migrating ? vm.status + " ⇄" : vm.status;
    if (state.textContent !== text) state.textContent = text;
    const wanted = previous ? previous.nextSibling : grid.firstChild;
    if (wanted !== el) grid.insertBefore(el, wanted);
    previous = el;
  }
  for (const el of existing.values()) el.remove();
  grid.dataset.compact = String(vms.length > COMPACT_AT);
  $("vm-count").textContent = String(vms.length);
}

// Read ``path``, show it with ``render`` (or the error in ``errorId``).
async function refresh(path, render, errorId) {
  try {
    render(await api(path));
    $(errorId).hidden = true;
  } catch (err) {
    $(errorId).textContent = err.message;
    $(errorId).hidden = false;
  }
}

async function loadVms() {
  clearTimeout(fleet.listTimer);
  await refresh("/api/v1/vms", renderGrid, "grid-error");
  fleet.listTimer = setTimeout(loadVms, 2000);
}

// Events come in bursts (a fleet starting, an evacuation): re-read the list once per burst.
function soonVms() {
  clearTimeout(fleet.listTimer);
  fleet.listTimer = setTimeout(loadVms, 100);
}

// -- migrations and the link ---------------------------------------------------------------
function migrationRow(m) {
  const tr = document.createElement("tr");
  tr.dataset.vm = m.vm;
  for (const cls of ["mig-vm", "status", "progress", "ram", "throughput", "downtime"]) {
    const td = document.createElement("td");
    td.className = cls;
    tr.append(td);
  }
  tr.querySelector(".mig-vm").textContent = m.vm;
  const badge = document.createElement("span");
  badge.className = "badge";
  tr.querySelector(".status").append(badge);
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.innerHTML = '<div class="fill"></div><span class="text"></span>';
  tr.querySelector(".progress").append(bar);
  return tr;
}

function renderMigrations(answer) {
  const body = $("mig-table").querySelector("tbody");
  const existing = new Map(Array.from(body.children, (el) => [el.dataset.vm, el]));
  let throughput = 0;
  fleet.inFlight = false;
  for (const m of answer.migrations) {
    let tr = existing.get(m.vm);
    existing.delete(m.vm);
    if (!tr) { tr = migrationRow(m); body.append(tr); }
    const active = !ENDED.has(m.status);
    fleet.inFlight = fleet.inFlight || active;
    if (active) throughput += m["throughput-bytes"] || 0;
    tr.dataset.status = m.status;
    setBadge(tr.querySelector(".status .badge"), m.status);
    const bar = tr.querySelector(".bar");
    const pct = m["progress-percent"];
    bar.dataset.state = m.status;
    bar.querySelector(".fill").style.width = (pct === null ? 0 : pct) + "%";
    bar.querySelector(".text").textContent = pct === null ? "–" : pct.toFixed(1) + " %";
    tr.querySelector(".ram").textContent =
      fmtBytes(m["transferred-bytes"]) + " / " + fmtBytes(m["total-bytes"]);
    tr.querySelector(".throughput").textContent = active ? fmtRate(m["throughput-bytes"]) : "–";
    tr.querySelector(".downtime").textContent = m.status === "completed"
      ? fmtMs(m["downtime-ms"]) : "expected " + fmtMs(m["expected-downtime-ms"]);
  }
  for (const el of existing.values()) el.remove();
  $("no-migrations").hidden = answer.migrations.length > 0;
  renderLink(answer.link, throughput);
}

function renderLink(link, throughput) {
  const limit = link["bandwidth-bytes"];
  $("link-bandwidth").textContent = link.bandwidth
    ? link.bandwidth + (limit ? " (" + fmtRate(limit) + ")" : "") +
      (link.latency ? ", latency " + link.latency : "")
    : "no link model";
  $("link-throughput").textContent = fmtRate(throughput);
  const bar = $("link-use");
  bar.hidden = !limit;
  if (limit) {
    const pct = Math.min(100, (100 * throughput) / limit);
    $("link-use-fill").style.width = pct + "%";
    $("link-use-text").textContent = pct.toFixed(0) + " % of the link";
    bar.setAttribute("aria-valuenow", pct.toFixed(0));
  }
}

async function loadMigrations() {
  clearTimeout(fleet.migTimer);
  await refresh("/api/v1/migrations", renderMigrations, "mig-error");
  fleet.migTimer = setTimeout(loadMigrations, fleet.inFlight ? 500 : 3000);
}

// -- events --------------------------------------------------------------------------------
function onEvent(message) {
  const payload = JSON.parse(message.data);
  logEvent("events", message.type, payload, message.lastEventId, MAX_LOG);
  if (message.type.startsWith("MIGRATION") || message.type === "FLEET_VM_REMOVED") loadMigrations();
  soonVms();
}

async function eventNames(vms) {
  let names = DEFAULT_EVENTS;
  if (vms.length) {
    try {
      const schema = await api("/api/v1/vms/" + encodeURIComponent(vms[0].name) + "/schema");
      const declared = schema.filter((e) => e["meta-type"] === "event").map((e) => e.name);
      if (declared.length) names = Array.from(new Set([...names, ...declared]));
    } catch (err) { /* keep the defaults */ }
  }
  return [...FLEET_EVENTS, ...names];
}

async function connectEvents(vms) {
  const names = await eventNames(vms);
  // Open with the recent history (what happened before the page opened), then follow live.
  const since = Math.max(0, fleet.lastEventId - MAX_LOG);
  const source = new EventSource("/api/v1/events?last_event_id=" + since);
  source.addEventListener("hello", () => setBadge($("conn"), "open"));
  source.addEventListener("gap", (m) => logEvent("events", "gap", { data: JSON.parse(m.data) },
    null, MAX_LOG));
  for (const name of names) source.addEventListener(name, onEvent);
  source.onerror = () => setBadge($("conn"), source.readyState === 2 ? "closed" : "connecting");
}

// -- start ---------------------------------------------------------------------------------
async function start() {
  try {
    const health = await api("/healthz");
    fleet.lastEventId = Number(health["events-last-id"]) || 0;
    $("version").textContent = health.version.package || "";
    $("mode").textContent = health.writable ? "mutations need the token" : "read-only mirror";
  } catch (err) { /* the page still shows what it can */ }
  for (const state of LEGEND) {
    const chip = document.createElement("span");
    chip.className = "vm";
    chip.dataset.state = state;
    chip.textContent = state;
    $("legend").append(chip);
  }
  let vms = [];
  try { vms = await api("/api/v1/vms"); } catch (err) { /* loadVms reports it */ }
  renderGrid(vms);
  loadVms();
  loadMigrations();
  connectEvents(vms);
}

document.addEventListener("DOMContentLoaded", start);
