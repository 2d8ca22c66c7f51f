// Helpers shared by the one-VM dashboard (dashboard.js) and the fleet's (fleet.js).
"use strict";

const $ = (id) => document.getElementById(id);

function setBadge(el, text) {
  el.textContent = text;
  el.dataset.state = text;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Number(n), i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}
const fmtRate = (n) => (n === null || n === undefined ? "–" : fmtBytes(n) + "/s");
const fmtMs = (n) => (n === null || n === undefined ? "–" : Number(n).toFixed(0) + " ms");
function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

// The bearer token typed into a page's header form, kept for the browser session.
const session = { token: sessionStorage.getItem("qmp-server-token") || "" };

// A fleet serves a VM's dashboard under /api/v1/vms/NAME/: its paths are relative to that.
const VM_BASE = (location.pathname.match(/^\/api\/v1\/vms\/[^/]+/) || [""])[0];

function url(path) {
  if (!VM_BASE) return path;
  return VM_BASE + (path.startsWith("/api/v1/") ? path.slice("/api/v1".length) : path);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (session.token && options.method && options.method !== "GET") {
    headers.Authorization = "Bearer " + session.token;
  }
  const response = await fetch(url(path), Object.assign({}, options, { headers }));
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const err = new Error(body && body.desc ? body.desc : response.statusText);
    err.errorClass = body && body.class;
    err.status = response.status;
    throw err;
  }
  return body;
}

// One event at the top of list ``listId`` (at most ``max`` kept); a fleet's events name their VM.
function logEvent(listId, name, payload, id, max) {
  const list = $(listId);
  const item = document.createElement("li");
  const ts = payload && payload.timestamp;
  const when = ts ? new Date(ts.seconds * 1000 + ts.microseconds / 1000) : new Date();
  item.dataset.event = name;
  if (id) item.value = Number(id);
  const nameSpan = document.createElement("span");
  nameSpan.className = "name";
  nameSpan.textContent = name;
  const data = payload && payload.data && Object.keys(payload.data).length
    ? " " + JSON.stringify(payload.data) : "";
  item.append(when.toISOString().slice(11, 23) + " ");
  if (payload && payload.vm) {
    item.dataset.vm = payload.vm;
    const vmSpan = document.createElement("span");
    vmSpan.className = "vm-name";
    vmSpan.textContent = payload.vm + " ";
    item.append(vmSpan);
  }
  item.append(nameSpan, data);
  list.prepend(item);
  while (list.children.length > max) list.lastElementChild.remove();
}

