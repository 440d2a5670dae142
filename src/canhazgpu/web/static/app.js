// canhazgpu's page: every host's GPUs and queue, live from /api/v1/events (server-sent
// events). The server pushes a fresh status document per host after every change; this
// script only draws them, and lets the clocks tick between changes. No build step.
'use strict';

const hosts = new Map(); // host -> {doc, section, skew}
const ACTIVITY_MAX = 50;
const ACTIVITY_RECENT = 20;  // events of each host shown on load, from its event stream
const logged = new Set();  // host:seq of the events shown
const ENDINGS = new Set(['reserved', 'released', 'expired', 'reclaimed', 'forced', 'granted']);
let source = null;
let reportTimer = null;

// ---------------------------------------------------------------- small helpers
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function short(seconds) { // as the CLI's table: 5s, 45m 0s, 1h 2m 15s
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  if (h) return `${h}h ${m}m ${s}s`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function hm(seconds) { // as the CLI's "idle 2h 10m": 2h 10m, 10m, 45s
  const total = Math.max(0, Math.floor(seconds));
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60);
  if (h) return `${h}h ${m}m`;
  return total >= 60 ? `${m}m` : `${total}s`;
}

function coarse(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60]]) {
    if (total >= size) return `${Math.floor(total / size)}${unit}`;
  }
  return `${total}s`;
}

function hours(h) { return h > 0 && h < 0.01 ? '<0.01' : h.toFixed(2); }

function ids(list) { return (Array.isArray(list) ? list : []).join(',') || '-'; }

function who(users) {
  if (!users || !users.length) return 'user unknown';
  if (users.length === 1) return `user ${users[0]}`;
  if (users.length === 2) return `users ${users[0]}, ${users[1]}`;  // as the CLI's lines
  return `users ${users.slice(0, -1).join(', ')} and ${users[users.length - 1]}`;
}

function mb(value) { return value === null || value === undefined ? '?' : `${value} MB`; }

function slug(host) { return host.replace(/[^A-Za-z0-9_-]/g, '_'); }

// Server time now, for a host: its documents carry Redis time; our clock may differ.
function serverNow(entry) { return Date.now() - entry.skew; }

// ---------------------------------------------------------------- ticking clocks
// Elements with data-since (elapsed) or data-until (remaining) hold server epoch ms.
function tick() {
  for (const entry of hosts.values()) {
    if (!entry.section) continue;
    const now = serverNow(entry);
    for (const node of entry.section.querySelectorAll('[data-since]')) {
      const prefix = node.dataset.prefix || '';
      const fmt = {coarse, hm}[node.dataset.fmt] || short;
      node.textContent = prefix + fmt((now - Number(node.dataset.since)) / 1000) + (node.dataset.suffix || '');
    }
    for (const node of entry.section.querySelectorAll('[data-until]')) {
      node.textContent = (node.dataset.prefix || '') + short((Number(node.dataset.until) - now) / 1000);
    }
  }
}

function since(ms, prefix, suffix, fmt) {
  return el('span', {'data-since': ms, 'data-prefix': prefix || null, 'data-suffix': suffix || null,
                     'data-fmt': fmt || null});
}

function until(ms, prefix) {
  return el('span', {'data-until': ms, 'data-prefix': prefix || null});
}

// ---------------------------------------------------------------- one GPU
function memoryBar(gpu) {
  if (gpu.memory_used_mb === null) return el('p', {class: 'muted', text: 'No usage known'});
  const total = gpu.memory_total_mb || 0;
  const share = total ? Math.min(100, (100 * gpu.memory_used_mb) / total) : 0;
  const fill = el('span', {class: 'fill'});
  fill.style.width = `${share.toFixed(1)}%`;
  const label = `${gpu.memory_used_mb} of ${total} MB used`;
  return el('div', {class: 'memory'},
    el('div', {class: 'bar', role: 'img', 'aria-label': label}, fill),
    el('span', {class: 'memory-text', text: `${gpu.memory_used_mb} / ${total} MB`}));
}

function detail(name, ...value) {
  return [el('dt', {text: name}), el('dd', {}, ...value)];
}

function gpuCard(gpu) {
  const res = gpu.reservation;
  const rows = [];
  let label = gpu.status;
  if (gpu.status === 'reserved') {
    label = res.waiting ? 'reserved (waiting for more)' : 'reserved';
    rows.push(detail('User', res.user));
    rows.push(detail('For', since(res.start_ms)));
    rows.push(detail('Type', res.name ? `${res.type} ${res.name}` : res.type));
    if (res.waiting) rows.push(detail('Details', 'granted to a request still waiting for more GPUs'));
    else if (res.heartbeat_ms) rows.push(detail('Heartbeat', since(res.heartbeat_ms, '', ' ago')));
    else if (res.expires_ms) rows.push(detail('Expires in', until(res.expires_ms)));
    if (res.idle_since_ms) rows.push(detail('Usage', since(res.idle_since_ms, 'idle ', '', 'hm')));
    if (res.note) rows.push(detail('Note', res.note));
  } else if (gpu.status === 'unreserved') {
    label = 'in use without reservation';
    rows.push(detail('Users', (gpu.users || []).join(', ') || 'unknown'));
  } else if (gpu.status === 'error') {
    rows.push(detail('Error', gpu.error || 'unreadable'));
  } else if (gpu.last_released_ms) {
    rows.push(detail('Free for', since(gpu.last_released_ms, '', '', 'coarse')));
  } else {
    rows.push(detail('Free', 'never reserved'));
  }
  if (gpu.model) rows.push(detail('Model', gpu.model.id));
  if (gpu.name) rows.push(detail('Type of GPU', gpu.name));
  const procs = gpu.processes || [];
  const title = `GPU ${gpu.id}`;
  return el('article', {class: `gpu state-${gpu.status}`, 'aria-label': `${title}: ${label}`,
                        'data-gpu': gpu.id, 'data-status': gpu.status},
    el('header', {class: 'gpu-head'}, el('h4', {text: title}), el('span', {class: 'badge', text: label})),
    el('dl', {}, rows.flat()),
    memoryBar(gpu),
    procs.length ? el('details', {},
      el('summary', {text: `${procs.length} process${procs.length === 1 ? '' : 'es'}`}),
      el('ul', {class: 'procs'}, procs.map(p => el('li', {},
        `PID ${p.pid} ${p.name || 'unknown'} (${p.user || '?'})`,
        p.used_memory_mb === null || p.used_memory_mb === undefined ? '' : `, ${p.used_memory_mb} MB`))))
      : null);
}

// ---------------------------------------------------------------- one host
function queueTable(host, rows, nowMs) {
  const id = `queue-${slug(host)}`;
  if (!rows || !rows.length) return el('p', {class: 'muted', id, text: 'Nobody is waiting.'});
  // One heading (the h3 above, which labels the table); on a phone each row is a card whose
  // cells carry their column's name (style.css), so nothing hides in a sideways scroll.
  const titles = ['Position', 'User', 'Type', 'Request', 'Granted', 'Waiting', 'Expected', 'Note'];
  const cell = (i, content) => el('td', {'data-label': titles[i]}, content);
  return el('div', {class: 'scroll'}, el('table', {id, class: 'queue', 'aria-labelledby': `${id}-title`},
    el('thead', {}, el('tr', {}, titles.map(t => el('th', {scope: 'col', text: t})))),
    el('tbody', {}, rows.map(r => el('tr', {},
      cell(0, String(r.position)),
      cell(1, r.user),
      cell(2, r.type || ''),
      cell(3, Array.isArray(r.requested) ? `GPUs ${r.requested.join(',')}` : `${r.requested} GPU(s)`),
      cell(4, ids(r.granted)),
      cell(5, since(nowMs - r.waiting_s * 1000)),
      cell(6, r.eta_s === null || r.eta_s === undefined ? '' : (r.eta_s === 0 ? 'now' : `in ~${short(r.eta_s)}`)),
      cell(7, r.note || ''))))));
}

function warnings(doc) {
  const bad = doc.gpus.filter(g => g.status === 'unreserved');
  if (!bad.length) return null;
  return el('div', {class: 'warning', role: 'alert'},
    el('strong', {text: 'In use without reservation: '}),
    el('ul', {}, bad.map(g => el('li', {class: 'unreserved-line'},
      `GPU ${g.id} by ${who(g.users)} - ${g.memory_used_mb} MB used`))),
    el('p', {text: 'These GPUs are never handed out. Reserve before using a GPU: canhazgpu reserve or canhazgpu run.'}));
}

function drawHost(host) {
  const entry = hosts.get(host);
  const state = entry.state;
  const doc = state.status;
  const section = entry.section;
  const titleId = `host-${slug(host)}`;
  const parts = [];
  const summary = doc ? doc.summary : null;
  parts.push(el('div', {class: 'panel-head'},
    el('h2', {id: titleId, text: host}),
    summary ? el('p', {class: 'summary'},
      `${summary.available} of ${summary.total} available`,
      summary.reserved ? `, ${summary.reserved} reserved` : '',
      summary.unreserved ? `, ${summary.unreserved} unreserved` : '',
      summary.error ? `, ${summary.error} in error` : '') : null,
    state.daemon === false ? el('p', {class: 'muted', text: 'no daemon running: GPU usage is re-read every 30 s and on each change'}) : null));
  if (state.error) {
    parts.push(el('p', {class: 'host-error', role: 'alert'},
      el('strong', {text: doc ? 'Not live: ' : 'Cannot read this host: '}), state.error));
  }
  if (doc) {
    parts.push(warnings(doc));
    parts.push(el('h3', {class: 'visually-hidden', text: `GPUs of ${host}`}));
    parts.push(el('div', {class: 'gpus'}, doc.gpus.map(gpuCard)));
    parts.push(el('h3', {id: `queue-${slug(host)}-title`, text: 'Queue'}));
    parts.push(queueTable(host, state.queue, doc.time_ms));
  } else if (!state.error) {
    parts.push(el('p', {class: 'muted', text: 'Reading…'}));
  }
  section.replaceChildren(...parts.filter(Boolean));
  section.classList.toggle('stale', Boolean(state.error));
  tick();
}

function setHosts(list) {
  const container = document.getElementById('hosts');
  const loading = document.getElementById('loading');
  if (loading) loading.remove();
  for (const host of [...hosts.keys()]) {
    if (!list.includes(host)) { hosts.get(host).section.remove(); hosts.delete(host); }
  }
  for (const host of list) {
    if (hosts.has(host)) continue;
    const section = el('section', {class: 'panel host', 'aria-labelledby': `host-${slug(host)}`,
                                   'data-host': host});
    container.append(section);
    hosts.set(host, {state: {host, status: null, queue: null, error: null}, section, skew: 0});
    drawHost(host);
  }
}

// ---------------------------------------------------------------- connection
function setConnection(state, text) {
  const node = document.getElementById('connection');
  node.dataset.state = state;
  document.getElementById('connection-text').textContent = text;
}

function updateConnection() {
  if (!source || source.readyState !== EventSource.OPEN) return;
  const down = [...hosts.values()].filter(e => e.state.error);
  if (down.length) setConnection('degraded', `Live; cannot read ${down.map(e => e.state.host).join(', ')}`);
  else setConnection('live', 'Live');
}

// ---------------------------------------------------------------- events
function describe(ev) {
  const g = `GPU ${ids(ev.gpus)}`;
  switch (ev.type) {
    case 'reserved': return `${g} reserved by ${ev.user} (${ev.kind})`;
    case 'released': case 'expired': case 'reclaimed': case 'forced':
      return `${g} ${ev.type} (${ev.user})`;
    case 'queued': return `${ev.user} queued for ${ev.ids ? 'GPU ' + ids(ev.ids) : (ev.count + ' GPU(s)')}`;
    case 'granted': return `${g} granted to ${ev.user}${ev.complete ? '' : ' (partial)'}`;
    case 'left': return `${ev.user} left the queue (${ev.reason})`;
    case 'unreserved_detected': return `${g} IN USE WITHOUT RESERVATION by ${(ev.users || []).join(', ') || 'unknown'}`;
    case 'unreserved_cleared': return `${g} no longer in use without reservation`;
    case 'usage_changed': return `${g} ${ev.memory_used_mb} MB used`;
    case 'gpu_error': return `${g} error: ${ev.error}`;
    case 'gpu_recovered': return `${g} readable again`;
    case 'pool_changed': return `pool is ${ev.count} GPUs`;
    case 'owner': return `${g} now held by PID ${ev.pid} (${ev.user}, ${ev.kind})`;
    case 'job_submitted': return `${job(ev)} submitted by ${ev.user}`;
    case 'job_started': return `${job(ev)} of ${ev.user} started on ${g}`;
    case 'job_ended': return `${job(ev)} of ${ev.user} ${ev.state}` +
      (ev.exit_code === null || ev.exit_code === undefined ? '' : ` (exit ${ev.exit_code})`) +
      (ev.reason ? `: ${ev.reason}` : '');
    default: return ev.type;
  }
}

function job(ev) {  // a detached job, as `canhazgpu events` names it
  return `job ${ev.job}` + (ev.name ? ` (${ev.name})` : '');
}

function logEvent(ev) {
  const key = `${ev.host}:${ev.seq}`;  // the recent events come again after a reconnect
  if (logged.has(key)) return;
  logged.add(key);
  const list = document.getElementById('activity');
  const time = new Date(ev.time_ms).toLocaleTimeString();
  list.prepend(el('li', {}, el('time', {datetime: new Date(ev.time_ms).toISOString(), text: time}),
    ' ', el('span', {class: 'event-host', text: ev.host}), ' ', describe(ev)));
  while (list.children.length > ACTIVITY_MAX) list.lastElementChild.remove();
  document.getElementById('activity-empty').hidden = true;
  if (ENDINGS.has(ev.type)) scheduleReport();
}

function connect() {
  // the last events of each host first (from the hosts' event streams), then live ones
  source = new EventSource(`/api/v1/events?view=1&recent=${ACTIVITY_RECENT}`);
  source.addEventListener('open', () => setConnection('live', 'Live'));
  source.addEventListener('error', () => {
    if (source.readyState === EventSource.CLOSED) {
      setConnection('down', 'Disconnected; retrying…');
      source.close();
      setTimeout(connect, 2000);
    } else {
      setConnection('down', 'Reconnecting…');
    }
  });
  source.addEventListener('hosts', msg => setHosts(JSON.parse(msg.data).hosts));
  source.addEventListener('state', msg => {
    const state = JSON.parse(msg.data);
    const entry = hosts.get(state.host);
    if (!entry) return;
    entry.state = state;
    if (state.status) entry.skew = Date.now() - state.status.time_ms;
    drawHost(state.host);
    updateConnection();
  });
  source.addEventListener('event', msg => logEvent(JSON.parse(msg.data)));
}

// ---------------------------------------------------------------- report
function scheduleReport() {
  clearTimeout(reportTimer);
  reportTimer = setTimeout(loadReport, 1000);
}

async function loadReport() {
  const days = document.getElementById('report-days').value;
  const body = document.querySelector('#report tbody');
  const total = document.getElementById('report-total');
  let data;
  try {
    const reply = await fetch(`/api/v1/report?days=${encodeURIComponent(days)}`);
    data = await reply.json();
    if (!reply.ok) throw new Error(data.error || reply.statusText);
  } catch (err) {
    total.textContent = `The report could not be read: ${err.message}`;
    return;
  }
  // every readable host together, summed by the server as `report --all-hosts` sums them
  const failed = data.hosts.filter(entry => !entry.report).map(entry => entry.host);
  const rows = data.all ? data.all.users : [];
  const top = rows.length ? Math.max(...rows.map(u => u.gpu_hours)) : 0;
  total.textContent = `${hours(data.all ? data.all.total_gpu_hours : 0)} GPU hours in total` +
    (failed.length ? ` (not counted: ${failed.join(', ')})` : '') +
    (rows.length ? '' : '; no reservations in this period.');
  body.replaceChildren(...rows.map(u => {
    const fill = el('span', {class: 'fill'});
    fill.style.width = `${top ? (100 * u.gpu_hours) / top : 0}%`;
    return el('tr', {},
      el('th', {scope: 'row', text: u.user}),
      el('td', {}, el('div', {class: 'hbar', 'aria-hidden': 'true'}, fill), el('span', {text: hours(u.gpu_hours)})),
      el('td', {text: `${u.percent.toFixed(1)}%`}));
  }));
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('report-days').addEventListener('change', loadReport);
  connect();
  loadReport();
  setInterval(tick, 1000);
});
