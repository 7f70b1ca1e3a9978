// qkd-station web view. One source of truth: the feed (/api/feed, Server-Sent Events),
// which relays the station's MQTT status model (docs/mqtt.md, docs/web.md). Everything
// is written with textContent / SVG attributes, never innerHTML: nothing from the feed
// is ever parsed as markup.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const CHANNELS_SHOWN = ["H", "V", "D", "A", "SYNC", "PPS"];
const COLOURS = { H: "#d62728", V: "#1f77b4", D: "#2ca02c", A: "#9467bd", SYNC: "#7f7f7f", PPS: "#bcbd22" };
const S = {
  session: null, state: null, schedule: null, mount: null, tagger: null, pass: null, health: null,
  sky: null, tracks: {}, alarms: {}, transitions: [], mountHist: [], taggerHist: [],
  summaries: {}, keyReports: {}, keyLevels: null, nowIso: null, count: 0,
};
// For tests and bench/web.py: when each topic last changed the page (epoch ms).
// log: [topic, the message's station time, epoch ms when the page had applied it], newest
// 5000 (bench/web.py compares it with the same messages seen on MQTT).
window.qkdStats = { applied: {}, messages: 0, log: [] };
window.qkdState = S;

const $ = (id) => document.getElementById(id);
function text(id, value) { const el = $(id); if (el && el.textContent !== String(value)) el.textContent = value; }
function el(tag, attrs, txt) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (txt !== undefined) e.textContent = txt;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}
function fmtNum(v, digits = 0) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 1e12) return v.toExponential(3);
  return v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
function pad(n) { return String(n).padStart(2, "0"); }
// UTC with the browser's local time beside it: "16:49:58Z (17:49:58 local)".
function fmtTime(iso, withDate) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (isNaN(d)) return "—";
  const utc = `${withDate ? d.toISOString().slice(0, 10) + " " : ""}${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}Z`;
  const local = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${utc} (${local} local)`;
}
function fmtDuration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "—";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h} h ${pad(m)} min` : m ? `${m} min ${pad(sec)} s` : `${sec} s`;
}
function nowMs() { return S.nowIso ? Date.parse(S.nowIso) : NaN; }
// Telemetry in time order only (QoS 0 may reorder across a reconnect); bounded.
function pushHist(list, p, max) {
  if (list.length && p.time < list[list.length - 1].time) return;
  list.push(p);
  if (list.length > max) list.splice(0, Math.floor(max / 4));
}
function stamp(topic) { window.qkdStats.applied[topic] = Date.now(); }

// Rendering is coalesced: a burst of messages (the snapshot, a 50 Hz mount feed on a fast
// simulated clock) costs one redraw per animation frame, and the charts at most 2 per
// second, so a phone keeps up and a hidden tab (no frames) costs almost nothing.
const dirty = new Set();
const CHARTS = new Set();
const CHART_MIN_MS = 500;
let framePending = false, lastChartMs = 0, pendingLog = [];
function want(fn) { dirty.add(fn); requestFrame(); }
// At most one frame per FRAME_MIN_MS: a person watching needs no more, a phone's battery does.
const FRAME_MIN_MS = 80;
let lastFrameMs = 0;
function requestFrame() {
  if (framePending) return;
  framePending = true;
  const wait = lastFrameMs + FRAME_MIN_MS - Date.now();
  if (wait > 0) setTimeout(() => requestAnimationFrame(frame), wait);
  else requestAnimationFrame(frame);
}
function frame() {
  framePending = false;
  lastFrameMs = Date.now();
  const now = Date.now();
  const chartsDue = now - lastChartMs >= CHART_MIN_MS;
  let ranChart = false;
  for (const fn of [...dirty]) {
    if (CHARTS.has(fn) && !chartsDue) continue;
    dirty.delete(fn);
    if (CHARTS.has(fn)) ranChart = true;
    fn();
  }
  if (ranChart) lastChartMs = now;
  if (dirty.size) setTimeout(requestFrame, Math.max(0, CHART_MIN_MS - (Date.now() - lastChartMs)));
  const applied = Date.now();
  const log = window.qkdStats.log;
  for (const [topic, t] of pendingLog) log.push([topic, t, applied]);
  pendingLog = [];
  if (log.length > 6000) log.splice(0, 1000);
}

// ------------------------------------------------------------------ session and commands

async function loadSession() {
  const r = await fetch("/api/session", { credentials: "same-origin", cache: "no-store" });
  S.session = await r.json();
  renderSession();
  return S.session;
}

function renderSession() {
  const s = S.session || {};
  $("login-form").hidden = !s.accounts || !!s.user;
  $("user-info").hidden = !s.user;
  text("user-name", s.user || "");
  text("user-role", s.role || "");
  const may = !!s.may_command;
  for (const id of ["cmd-stop", "cmd-park", "cmd-set-mode", "mode-select", "goto-az", "goto-el", "cmd-goto", "cmd-abort"]) $(id).disabled = !may;
  $("readonly-note").hidden = may;
  document.body.classList.toggle("operator", may);
  renderSchedule();
}

async function command(verb, args) {
  const s = S.session || {};
  text("reply", `${verb}…`);
  $("reply").className = "reply";
  let body;
  try {
    const r = await fetch(`/api/cmd/${encodeURIComponent(verb)}`, {
      method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": s.csrf || "" },
      body: JSON.stringify(args || {}),
    });
    body = await r.json();
  } catch (e) {
    body = { error: { code: "network", message: String(e) } };
  }
  const rep = body.reply;
  if (rep && rep.ok) {
    text("reply", `ok: ${verb} ${JSON.stringify(rep.result || {})}`);
    $("reply").className = "reply ok";
  } else {
    const err = (rep && rep.error) || body.error || { code: "?", message: "no answer" };
    text("reply", `${verb} refused [${err.code}]: ${err.message}`);
    $("reply").className = "reply bad";
  }
}

function wireControls() {
  $("cmd-stop").addEventListener("click", () => command("stop", {}));
  $("cmd-park").addEventListener("click", () => command("park", {}));
  $("cmd-set-mode").addEventListener("click", () => command("set_mode", { mode: $("mode-select").value }));
  $("cmd-goto").addEventListener("click", () => command("goto", { az_deg: Number($("goto-az").value), el_deg: Number($("goto-el").value) }));
  $("cmd-abort").addEventListener("click", () => command("abort_pass", { reason: "operator abort (web view)" }));
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    text("login-error", "");
    const r = await fetch("/api/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: $("login-name").value, password: $("login-password").value }),
    });
    $("login-password").value = "";
    if (!r.ok) {
      const b = await r.json().catch(() => ({}));
      text("login-error", (b.error && b.error.message) || `login failed (${r.status})`);
      return;
    }
    await loadSession();
    startFeed();
  });
  $("logout").addEventListener("click", async () => {
    await fetch("/api/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": (S.session && S.session.csrf) || "" } });
    await loadSession();
    startFeed();
  });
}

// ------------------------------------------------------------------ feed

let source = null;
function startFeed() {
  if (source) source.close();
  if (S.session && !S.session.may_view) { text("feed-state", "log in to see the station"); return; }
  source = new EventSource("/api/feed");
  // Every (re)connection starts with a full snapshot: the histories start over with it, so
  // a reconnect does not list the same transitions twice.
  source.addEventListener("open", () => {
    S.transitions = []; S.mountHist = []; S.taggerHist = [];
    text("feed-state", "live");
  });
  source.addEventListener("error", () => text("feed-state", "reconnecting…"));
  source.addEventListener("ready", () => text("feed-state", "live"));
  source.addEventListener("msg", (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    S.count += 1;
    window.qkdStats.messages = S.count;
    if (S.count % 20 === 1) text("feed-count", S.count);
    handle(m.topic, m.payload);
  });
}

function handle(topic, p) {
  if (p && typeof p === "object" && typeof p.time === "string" && (!S.nowIso || p.time > S.nowIso)) S.nowIso = p.time;
  switch (topic) {
    case "status": text("status", p); $("status").className = `badge ${p}`; stamp(topic); break;
    case "state": S.state = p; want(renderState); break;
    case "schedule": S.schedule = p; want(renderSchedule); stamp(topic); break;
    case "mount":
      S.mount = p; pushHist(S.mountHist, p, 4000);
      want(renderMount); stamp(topic); break;
    case "timetagger":
      S.tagger = p; pushHist(S.taggerHist, p, 1200);
      want(renderRates); stamp(topic); break;
    case "pass": S.pass = p; renderProgress(); stamp(topic); break;
    case "health": S.health = p; want(renderHealth); stamp(topic); break;
    case "alarms":
      if (p.state === "raised") S.alarms[p.key] = p; else delete S.alarms[p.key];
      renderAlarms(); stamp(topic); break;
    case "transitions": {
      // Two kinds share the topic (docs/mqtt.md): phase changes and key-relay events; an
      // older station sends no kind (a phase change). Anything else is not shown.
      const kind = p.kind === undefined ? "phase" : p.kind;
      if (kind !== "phase" && kind !== "relay") break;
      if (kind === "phase" && p.to_phase === "prepare" && !phaseTransitions().some((t) => t.pass_id === p.pass_id && t.to_phase === "prepare")) {
        S.mountHist = []; S.taggerHist = [];
      }
      S.transitions.push({ ...p, kind }); if (S.transitions.length > 50) S.transitions.shift();
      want(renderTransitions); stamp(topic); break;
    }
    case "track": S.tracks[p.pass_id] = p; skyKey = ""; want(drawSky); want(drawErrChart); stamp(topic); break;
    case "sky": S.sky = p; want(drawSky); stamp(topic); break;
    case "keys/levels": S.keyLevels = p; renderKeys(); stamp(topic); break;
    default: {
      const mm = /^passes\/([^/]+)\/(summary|key)$/.exec(topic);
      if (mm && mm[2] === "summary") { S.summaries[mm[1]] = p; renderSummaries(); stamp("summary"); }
      else if (mm) { S.keyReports[mm[1]] = p; renderKeys(); stamp("keys"); }
    }
  }
  want(renderClock);
  pendingLog.push([topic, (p && p.time) || null]);
  requestFrame();
}

// ------------------------------------------------------------------ renderers

function renderClock() {
  if (!S.nowIso) return;
  const d = new Date(S.nowIso);
  text("now-utc", `${d.toISOString().slice(0, 19).replace("T", " ")}Z`);
  text("now-local", `(${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} local)`);
  renderAlarmAges();
}

function passText(ref) {
  if (!ref) return "none";
  return `${ref.satellite} ${ref.pass_id}: AOS ${fmtTime(ref.aos)}, LOS ${fmtTime(ref.los)}, max el ${fmtNum(ref.max_el_deg, 1)}°`;
}

function renderState() {
  const st = S.state;
  text("station-name", `${st.config.station_name} (${st.station_id})`);
  text("mode", st.mode); $("mode").className = `mode ${st.mode}`;
  text("phase", st.phase); $("phase").className = `phase ${st.phase}`;
  text("message", st.message || "");
  text("current-pass", passText(st.current_pass));
  let next = passText(st.next_pass);
  if (st.next_pass && st.time) next += ` — in ${fmtDuration((Date.parse(st.next_pass.aos) - Date.parse(st.time)) / 1000)}`;
  text("next-pass", next);
  for (const li of $("phase-steps").children) li.classList.toggle("now", li.dataset.phase === st.phase);
  if (S.session && !S.session.may_command) { /* keep the select as it is for operators */ } else if (document.activeElement !== $("mode-select")) $("mode-select").value = st.mode;
  if (!st.current_pass) { S.pass = null; renderProgress(); }
  stamp("state");
  want(drawSky);
}

function phaseTransitions() { return S.transitions.filter((t) => t.kind === "phase"); }
function transitionText(t) {
  if (t.kind === "relay") {
    const what = `${t.step}: ${t.key_ids} key IDs, ${t.bits} bits`;
    return `${fmtTime(t.time)} key relay ${what} (${t.role}, partner ${t.partner} via ${t.satellite})` +
      (t.reason ? ` — ${t.reason}` : "");
  }
  return `${fmtTime(t.time)} ${t.satellite}: ${t.from_phase} → ${t.to_phase} (${t.mode})${t.reason ? ` — ${t.reason}` : ""}`;
}
function renderTransitions() {
  const list = $("transitions");
  list.replaceChildren();
  for (const t of S.transitions.slice(-8).reverse()) list.append(el("li", { class: `kind-${t.kind}` }, transitionText(t)));
  // Mode and phase say why: the reason of the last phase change, when the station gave one.
  const phases = phaseTransitions();
  const t = phases[phases.length - 1];
  if (t) text("last-transition", `${t.from_phase} → ${t.to_phase} at ${fmtTime(t.time)}, ${t.satellite} ${t.pass_id}, ${t.mode} mode`);
  text("phase-reason", t && t.reason ? `— ${t.reason}` : "");
  const seen = new Set(phases.filter((x) => t && x.pass_id === t.pass_id).map((x) => x.to_phase));
  for (const li of $("phase-steps").children) li.classList.toggle("done", seen.has(li.dataset.phase));
}

function renderSchedule() {
  const body = $("schedule").tBodies[0];
  if (!body) return;
  body.replaceChildren();
  const passes = (S.schedule && S.schedule.passes) || [];
  const may = S.session && S.session.may_command;
  for (const p of passes.slice(0, 30)) {
    const tr = el("tr", { class: `decision-${p.decision}` });
    tr.append(el("td", {}, `${p.satellite} ${p.pass_id}`), el("td", {}, fmtTime(p.aos, true)),
      el("td", {}, `${fmtNum(p.max_el_deg, 1)}°`), el("td", { class: "decision" }, p.decision), el("td", {}, p.reason));
    const td = el("td");
    if (may && (p.decision === "planned" || p.decision === "included")) {
      const b = el("button", { type: "button", class: "small" }, "skip");
      b.addEventListener("click", () => command("skip_pass", { pass_id: p.pass_id }));
      td.append(b);
    } else if (may && (p.decision === "skipped" || p.decision === "excluded")) {
      const b = el("button", { type: "button", class: "small" }, "include");
      b.addEventListener("click", () => command("include_pass", { pass_id: p.pass_id }));
      td.append(b);
    }
    tr.append(td);
    body.append(tr);
  }
}

function renderProgress() {
  const p = S.pass;
  if (!p) { text("pass-progress", ""); return; }
  text("pass-progress", `${p.phase}: elapsed ${fmtDuration(p.elapsed_s)}, to LOS ${fmtDuration(p.remaining_s)}, el ${fmtNum(p.el_deg, 1)}°, range ${fmtNum(p.range_km, 0)} km`);
  text("ev-recorded", fmtNum(p.events_recorded));
  text("ev-streamed", fmtNum(p.events_streamed));
  text("ev-lost", fmtNum(p.events_lost));
  $("ev-lost").className = p.events_lost ? "bad" : "";
}

function renderMount() {
  const m = S.mount;
  const flags = [m.tracking && "tracking", m.moving && "moving", m.parked && "parked", !m.connected && "DISCONNECTED"].filter(Boolean).join(", ");
  text("mount-text", `actual az ${fmtNum(m.actual_az_deg, 2)}° el ${fmtNum(m.actual_el_deg, 2)}° · commanded ${m.commanded_az_deg === null ? "—" : fmtNum(m.commanded_az_deg, 2) + "°"} / ${m.commanded_el_deg === null ? "—" : fmtNum(m.commanded_el_deg, 2) + "°"} · ${flags || "stopped"}`);
  text("track-err", m.tracking_error_arcsec === null ? "—" : `${fmtNum(m.tracking_error_arcsec, 1)}″`);
  want(drawSky); want(drawErrChart);
}

function renderRates() {
  const t = S.tagger;
  const body = $("rates").tBodies[0];
  const names = Object.keys(t.rates_hz).sort((a, b) => (CHANNELS_SHOWN.indexOf(a) + 99) % 99 - (CHANNELS_SHOWN.indexOf(b) + 99) % 99);
  for (const name of names) {
    let row = $(`rate-row-${name}`);
    if (!row) {
      row = el("tr", { id: `rate-row-${name}` });
      const sw = el("td", { class: "swatch" }); sw.append(el("span", { class: `sw ch-${name}` }));
      row.append(sw, el("td", {}, name), el("td", { id: `rate-${name}`, class: "num" }));
      body.append(row);
    }
    text(`rate-${name}`, `${fmtNum(t.rates_hz[name], 0)} /s`);
  }
  want(drawRateChart);
  text("tagger-state", `${t.acquiring ? "acquiring" : "idle"}${t.overflow ? ", OVERFLOW" : ""}; overflows ${t.overflow_count}; events ${fmtNum(t.events_total)}${t.connected ? "" : "; DISCONNECTED"}`);
}

function renderHealth() {
  const h = S.health;
  text("health-ok", h.ok ? "ready for the next pass" : "NOT READY");
  $("health-ok").className = h.ok ? "ok" : "bad";
  const rows = [];
  const laser = (h.drivers || []).find((d) => d.name === "beacon_laser");
  rows.push(["GPSDO / time reference", h.time_reference_locked === null ? "none" : h.time_reference_locked ? "locked" : "NOT LOCKED", h.time_reference_locked !== false]);
  rows.push(["disk", `${fmtBytes(h.disk_free_bytes)} free, next pass ≈ ${fmtBytes(h.expected_pass_bytes)}`, !(h.disk_free_bytes !== null && h.expected_pass_bytes !== null && h.disk_free_bytes < h.expected_pass_bytes)]);
  rows.push(["beacon laser", laser ? `${laser.connected ? "connected" : "NOT CONNECTED"}${laser.detail ? ": " + laser.detail : ""}` : "none", !laser || laser.connected]);
  rows.push(["stream consumer", h.stream_consumer_connected === null ? "streaming off" : h.stream_consumer_connected ? "connected" : "none connected", h.stream_consumer_connected !== false]);
  for (const d of h.drivers || []) if (d.name !== "beacon_laser") rows.push([d.name, `${d.connected ? "connected" : "NOT CONNECTED"}${d.detail ? ": " + d.detail : ""}`, d.connected]);
  for (const e of h.elements || []) rows.push([`elements ${e.satellite}`, `${fmtNum(e.age_days, 1)} days old`, true]);
  rows.push(["MQTT messages dropped", fmtNum(h.mqtt_dropped_total), !h.mqtt_dropped_total]);
  const body = $("health").tBodies[0];
  body.replaceChildren();
  for (const [k, v, ok] of rows) { const tr = el("tr", { class: ok ? "" : "bad" }); tr.append(el("th", {}, k), el("td", {}, v)); body.append(tr); }
}
function fmtBytes(b) {
  if (b === null || b === undefined) return "—";
  const u = ["B", "kB", "MB", "GB", "TB"]; let i = 0;
  while (b >= 1000 && i < u.length - 1) { b /= 1000; i += 1; }
  return `${b.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function renderAlarms() {
  const list = $("alarms");
  list.replaceChildren();
  const items = Object.values(S.alarms).sort((a, b) => (a.time < b.time ? -1 : 1));
  if (!items.length) { list.append(el("li", { class: "none" }, "none active")); return; }
  for (const a of items) {
    const li = el("li", { class: `sev-${a.severity}`, "data-key": a.key });
    li.append(el("b", {}, `${a.severity} ${a.key}`), document.createTextNode(` ${a.message} — since ${fmtTime(a.time)}, up `), el("span", { class: "age", "data-since": a.time }, ""));
    list.append(li);
  }
  renderAlarmAges();
}
function renderAlarmAges() {
  const now = nowMs();
  for (const s of document.querySelectorAll("#alarms .age")) s.textContent = fmtDuration((now - Date.parse(s.dataset.since)) / 1000);
}

function numbersTable(obj) {
  const t = el("table", { class: "numbers" });
  for (const [k, v] of Object.entries(obj)) { const tr = el("tr"); tr.append(el("th", {}, k), el("td", { class: "num" }, fmtNum(v, Number.isInteger(v) ? 0 : 4))); t.append(tr); }
  return t;
}
function fmtPct(v) { return typeof v === "number" && Number.isFinite(v) ? `${(100 * v).toFixed(2)} %` : "—"; }
// The key-store levels (the KME's model: per peer) and each pass's key report (its numbers).
function renderKeys() {
  const lv = S.keyLevels;
  if (lv && Array.isArray(lv.peers)) {
    const box = $("key-levels"); box.className = "";
    const t = el("table", { id: "key-levels-table" });
    const head = el("tr");
    for (const h of ["peer", "available bits", "blocks", "reserved", "consumed", ""]) head.append(el("th", {}, h));
    t.append(head);
    for (const p of lv.peers) {
      const tr = el("tr", { class: p.low ? "bad" : "", "data-peer": p.peer });
      tr.append(el("td", {}, p.peer), el("td", { class: "num" }, fmtNum(p.available_bits)), el("td", { class: "num" }, fmtNum(p.available_blocks)),
        el("td", { class: "num" }, fmtNum(p.reserved_blocks)), el("td", { class: "num" }, fmtNum(p.consumed_blocks)), el("td", {}, p.low ? "LOW" : ""));
      t.append(tr);
    }
    box.replaceChildren(el("div", {}, `key-store levels at ${fmtTime(lv.time)} (low below ${fmtNum(lv.low_store_bits)} bits)`), t);
  }
  const body = $("key-reports").tBodies[0];
  body.replaceChildren();
  for (const [id, rep] of Object.entries(S.keyReports).slice(-10).reverse()) {
    const tr = el("tr", { "data-pass": id }); const td = el("td");
    const head = el("div", { class: "key-head" },
      `QBER ${fmtPct(rep.qber_overall)} · sifted ${fmtNum(rep.sifted_bits)} bits · final key ${fmtNum(rep.final_bits)} bits · stored ${fmtNum(rep.stored_bits)} bits`);
    const more = el("details"); more.append(el("summary", {}, "all figures"), numbersTable(rep));
    td.append(head, more);
    tr.append(el("th", {}, id), td); body.append(tr);
  }
}
function renderSummaries() {
  const body = $("summaries").tBodies[0];
  body.replaceChildren();
  for (const s of Object.values(S.summaries).sort((a, b) => (a.planned_aos < b.planned_aos ? 1 : -1)).slice(0, 10)) {
    const te = s.tracking_error ? `rms ${fmtNum(s.tracking_error.rms_arcsec, 1)}″` : "";
    const tr = el("tr");
    tr.append(el("td", {}, `${s.satellite} ${s.pass_id}`), el("td", {}, s.outcome), el("td", {}, s.reason || ""),
      el("td", {}, `${fmtNum(s.events_recorded)} events, ${fmtNum(s.events_lost)} lost`), el("td", {}, te));
    body.append(tr);
  }
}

// ------------------------------------------------------------------ sky plot

const SKY = { cx: 200, cy: 200, r: 180 };
function proj(az, el) {
  const rr = SKY.r * (90 - Math.max(-5, el)) / 90;
  const a = az * Math.PI / 180;
  return [SKY.cx + rr * Math.sin(a), SKY.cy - rr * Math.cos(a)];
}
function pts(list) { return list.map(([a, e]) => proj(a, e).map((v) => v.toFixed(1)).join(",")).join(" "); }
// The circle of angular radius rho around (az, el), as a polygon on the plot.
function capPolygon(az, el, rho) {
  const out = [];
  const la1 = el * Math.PI / 180, lo1 = az * Math.PI / 180, d = rho * Math.PI / 180;
  for (let b = 0; b <= 360; b += 6) {
    const br = b * Math.PI / 180;
    const la2 = Math.asin(Math.sin(la1) * Math.cos(d) + Math.cos(la1) * Math.sin(d) * Math.cos(br));
    const lo2 = lo1 + Math.atan2(Math.sin(br) * Math.sin(d) * Math.cos(la1), Math.cos(d) - Math.sin(la1) * Math.sin(la2));
    out.push([lo2 * 180 / Math.PI, Math.max(0, la2 * 180 / Math.PI)]);
  }
  return out;
}
function currentTrack() {
  const st = S.state;
  const id = (st && st.current_pass && st.current_pass.pass_id) || (st && st.next_pass && st.next_pass.pass_id);
  return id ? S.tracks[id] : null;
}

// Two layers: the sky itself (mask, grid, Sun, Moon, track) is rebuilt only when those
// change; the live layer (trail and markers) on every frame with new mount telemetry.
function skyLayers() {
  const root = $("sky");
  if (!root.firstChild) root.append(svg("g", { id: "sky-static" }), svg("g", { id: "sky-live" }));
  return [$("sky-static"), $("sky-live")];
}
let skyKey = "";
function drawSky() {
  if (!$("sky")) return;
  const [g] = skyLayers();
  const tr0 = currentTrack();
  const key = `${S.sky ? S.sky.time : ""}|${tr0 ? tr0.pass_id : ""}`;
  if (key !== skyKey || !g.firstChild) { skyKey = key; drawSkyStatic(g); }
  drawSkyLive();
}
function drawSkyStatic(g) {
  g.replaceChildren();
  g.append(svg("circle", { cx: SKY.cx, cy: SKY.cy, r: SKY.r, class: "sky-bg" }));
  if (S.sky) {
    const mask = S.sky.horizon_mask;
    const inner = mask.map(([a, e]) => proj(a, e));
    let d = `M ${SKY.cx} ${SKY.cy - SKY.r} A ${SKY.r} ${SKY.r} 0 1 1 ${SKY.cx - 0.01} ${SKY.cy - SKY.r} Z M ${inner.map((p) => p.map((v) => v.toFixed(1)).join(" ")).join(" L ")} Z`;
    g.append(svg("path", { d, class: "mask", "fill-rule": "evenodd" }));
    g.append(svg("circle", { cx: SKY.cx, cy: SKY.cy, r: SKY.r * (90 - S.sky.min_el_deg) / 90, class: "floor" }));
  }
  for (const e of [30, 60]) g.append(svg("circle", { cx: SKY.cx, cy: SKY.cy, r: SKY.r * (90 - e) / 90, class: "grid" }));
  for (let a = 0; a < 360; a += 45) { const [x, y] = proj(a, 0); g.append(svg("line", { x1: SKY.cx, y1: SKY.cy, x2: x, y2: y, class: "grid" })); }
  for (const [lab, a] of [["N", 0], ["E", 90], ["S", 180], ["W", 270]]) {
    const [x, y] = proj(a, -4.5); const t = svg("text", { x, y: y + 4, class: "compass", "text-anchor": "middle" }); t.textContent = lab; g.append(t);
  }
  if (S.sky) {
    for (const [body, az, elv, rho] of [["sun", S.sky.sun_az_deg, S.sky.sun_el_deg, S.sky.sun_exclusion_deg], ["moon", S.sky.moon_az_deg, S.sky.moon_el_deg, S.sky.moon_exclusion_deg]]) {
      if (elv + rho < 0) continue;
      g.append(svg("polygon", { points: pts(capPolygon(az, elv, rho)), class: `excl ${body}`, id: `${body}-zone` }));
      if (elv >= 0) { const [x, y] = proj(az, elv); g.append(svg("circle", { cx: x, cy: y, r: body === "sun" ? 7 : 5, class: `body ${body}`, id: `${body}-marker` })); }
    }
  }
  const tr = currentTrack();
  if (tr && tr.points.length) {
    const all = tr.points.map((p) => [p.az_deg, p.el_deg]);
    g.append(svg("polyline", { points: pts(all), class: "track", id: "planned-track" }));
    if (tr.qkd_start && tr.qkd_end) {
      const a = Date.parse(tr.qkd_start) / 1000, b = Date.parse(tr.qkd_end) / 1000;
      const q = tr.points.filter((p) => p.t >= a && p.t <= b).map((p) => [p.az_deg, p.el_deg]);
      if (q.length > 1) g.append(svg("polyline", { points: pts(q), class: "qkd", id: "qkd-window" }));
    }
    const [x, y] = proj(all[0][0], all[0][1]);
    g.append(svg("path", { d: `M ${x} ${y - 6} l 5 9 l -10 0 Z`, class: "aos" }));
  }
}
// The live layer's three elements are made once and then only moved (attributes set), so
// a 50 Hz mount feed costs no DOM rebuild. Shown in every phase: the slew of prepare too.
function liveEl(g, tag, id, cls) {
  let e = document.getElementById(id);
  if (!e) { e = svg(tag, { id, class: cls }); g.append(e); }
  return e;
}
function show(e, on) { if (on) e.removeAttribute("display"); else e.setAttribute("display", "none"); }
let trailKey = "";
function drawSkyLive() {
  const [, g] = skyLayers();
  const hist = S.mountHist;
  const trailEl = liveEl(g, "polyline", "mount-trail", "trail");
  const key = `${hist.length}|${hist.length ? hist[hist.length - 1].time : ""}`;
  if (key !== trailKey) {
    trailKey = key;
    const trail = hist.slice(-600).map((m) => [m.actual_az_deg, m.actual_el_deg]);
    trailEl.setAttribute("points", trail.length > 1 ? pts(trail) : "");
  }
  const m = S.mount;
  if (!m) return;   // the markers appear with the first telemetry
  const cmd = liveEl(g, "path", "commanded-marker", "cmd-marker");
  const act = liveEl(g, "circle", "mount-marker", "act-marker");
  show(cmd, m.commanded_az_deg !== null && m.commanded_el_deg !== null);
  if (m.commanded_az_deg !== null && m.commanded_el_deg !== null) {
    const [x, y] = proj(m.commanded_az_deg, m.commanded_el_deg);
    cmd.setAttribute("d", `M ${(x - 7).toFixed(1)} ${y.toFixed(1)} L ${(x + 7).toFixed(1)} ${y.toFixed(1)} M ${x.toFixed(1)} ${(y - 7).toFixed(1)} L ${x.toFixed(1)} ${(y + 7).toFixed(1)}`);
  }
  const [x, y] = proj(m.actual_az_deg, m.actual_el_deg);
  for (const [k, v] of [["cx", x.toFixed(2)], ["cy", y.toFixed(2)], ["r", 5], ["data-az", m.actual_az_deg], ["data-el", m.actual_el_deg], ["data-time", m.time]]) act.setAttribute(k, v);
}

// ------------------------------------------------------------------ charts

function axes(g, w, h, yTicks, xLabel) {
  g.append(svg("rect", { x: 40, y: 5, width: w - 45, height: h - 25, class: "plot-bg" }));
  for (const [y, label] of yTicks) {
    g.append(svg("line", { x1: 40, x2: w - 5, y1: y, y2: y, class: "grid" }));
    const t = svg("text", { x: 36, y: y + 3, class: "tick", "text-anchor": "end" }); t.textContent = label; g.append(t);
  }
  if (xLabel) { const t = svg("text", { x: w - 5, y: h - 6, class: "tick", "text-anchor": "end" }); t.textContent = xLabel; g.append(t); }
}

function drawErrChart() {
  const g = $("err-chart");
  g.replaceChildren();
  const W = 400, H = 160;
  const samples = S.mountHist.filter((m) => m.tracking_error_arcsec !== null && m.tracking_error_arcsec !== undefined);
  const tr = currentTrack();
  let t0 = tr ? Date.parse(tr.aos) : NaN, t1 = tr ? Date.parse(tr.los) : NaN;
  if (samples.length && !(Number.isFinite(t0) && Number.isFinite(t1))) { t0 = Date.parse(samples[0].time); t1 = Date.parse(samples[samples.length - 1].time) + 1; }
  // Log scale 0.1" .. 10^4": acquisition (degrees) and tracking (arcseconds) both readable.
  const lo = -1, hi = 4;
  const y = (v) => 5 + (H - 25) * (1 - (Math.log10(Math.min(Math.max(v, 0.1), 1e4)) - lo) / (hi - lo));
  axes(g, W, H, [[y(0.1), "0.1″"], [y(1), "1″"], [y(10), "10″"], [y(100), "100″"], [y(1000), "1000″"], [y(1e4), "10⁴″"]], "AOS → LOS (UTC)");
  if (!samples.length || !(t1 > t0)) return;
  const x = (t) => 40 + (W - 45) * Math.min(1, Math.max(0, (t - t0) / (t1 - t0)));
  const p = samples.map((m) => `${x(Date.parse(m.time)).toFixed(1)},${y(m.tracking_error_arcsec).toFixed(1)}`).join(" ");
  g.append(svg("polyline", { points: p, class: "err-line", id: "err-line" }));
}

function drawRateChart() {
  const g = $("rate-chart");
  g.replaceChildren();
  const W = 400, H = 160;
  const hist = S.taggerHist;
  const lo = 1, hi = 8;  // 10 /s .. 100 M/s, log scale
  const y = (v) => 5 + (H - 25) * (1 - (Math.log10(Math.max(v, 10)) - lo) / (hi - lo));
  axes(g, W, H, [[y(10), "10"], [y(1e4), "10k"], [y(1e6), "1M"], [y(1e8), "100M"]], "station time →");
  if (hist.length < 2) return;
  const t0 = Date.parse(hist[0].time), t1 = Date.parse(hist[hist.length - 1].time);
  if (!(t1 > t0)) return;
  const x = (t) => 40 + (W - 45) * (t - t0) / (t1 - t0);
  for (const ch of ["H", "V", "D", "A"]) {
    const p = hist.filter((h) => ch in h.rates_hz).map((h) => `${x(Date.parse(h.time)).toFixed(1)},${y(h.rates_hz[ch]).toFixed(1)}`).join(" ");
    if (p) g.append(svg("polyline", { points: p, class: `rate-line ch-${ch}`, stroke: COLOURS[ch] }));
  }
}

// ------------------------------------------------------------------ start

CHARTS.add(drawErrChart).add(drawRateChart);

document.addEventListener("DOMContentLoaded", async () => {
  wireControls();
  drawSky(); drawErrChart(); drawRateChart();
  try { await loadSession(); } catch (e) { text("feed-state", "cannot reach the web view"); return; }
  startFeed();
});
