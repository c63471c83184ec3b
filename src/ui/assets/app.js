// wstap live view: plain JS, no build step. Everything it shows comes from
// the JSON API (/api/...); /api/events (server-sent events) only says when
// to ask again, so a page that falls behind simply reloads what it shows.
'use strict';

const PAGE = 200; // frames per API request
const OVERSCAN = 10; // rows rendered above and below the viewport

const $ = (id) => document.getElementById(id);

const state = {
  conns: [],
  selected: null, // connection id
  detail: null,
  frameFilter: '', // query string of the active filters
  total: 0, // frames matching the filters
  first: null, // number of the oldest kept frame
  pages: new Map(), // page index -> array of frames
  loading: new Set(), // page indexes being fetched
  follow: true, // keep the newest frame in view
  selectedFrame: null, // frame number
  selectedFrameData: null,
  generation: 0, // bumps when the selection or filters change
};

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function bytes(n) {
  if (n < 1024) return n + ' B';
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
  return (n / 1024 / 1024).toFixed(1) + ' MiB';
}

function duration(ms) {
  if (ms < 1000) return Math.round(ms) + ' ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + 'm ' + Math.floor(s % 60) + 's';
  return Math.floor(m / 60) + 'h ' + (m % 60) + 'm';
}

function clock(ts) {
  // "2024-05-01T12:34:56.123456Z" -> "12:34:56.123"
  return typeof ts === 'string' && ts.length >= 23 ? ts.slice(11, 23) : ts;
}

async function api(path, options) {
  const resp = await fetch(path, options);
  let body = null;
  const text = await resp.text();
  if (text) {
    try { body = JSON.parse(text); } catch (_) { body = { error: text }; }
  }
  return { status: resp.status, ok: resp.ok, headers: resp.headers, body };
}

function postJSON(path, value) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(value),
  });
}

// Runs fn at most once per `ms`, the last call winning.
function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const run = async () => {
    again = false;
    try { await fn(); } catch (e) { console.warn(e); }
    timer = setTimeout(() => {
      timer = null;
      if (again) kick();
    }, ms);
  };
  const kick = () => {
    if (timer) { again = true; return; }
    timer = setTimeout(run, 0);
  };
  return kick;
}

// ---------- connections ----------

const refreshConns = throttle(async () => {
  const r = await api('/api/connections');
  if (!r.ok || !Array.isArray(r.body)) return;
  state.conns = r.body;
  renderConns();
  const sel = state.conns.find((c) => c.id === state.selected);
  if (sel) renderSummary(sel);
}, 300);

function severityOf(c) {
  return c.severity || (c.findings && c.findings.length ? 'info' : 'none');
}

function renderConns() {
  const tbody = $('conn-rows');
  const rows = [];
  for (const c of state.conns.slice().reverse()) {
    const n = c.findings.length;
    const sev = severityOf(c);
    const badge = el('span', {
      class: 'badge ' + (n ? sev : 'none'),
      'aria-label': n ? `${n} finding${n > 1 ? 's' : ''}, worst: ${sev}` : 'no findings',
      text: n ? String(n) : '–',
    });
    const status = c.status === null ? '…' : String(c.status);
    const tr = el('tr', {
      tabindex: '0',
      'data-conn-id': String(c.id),
      'aria-current': c.id === state.selected ? 'true' : null,
    },
      el('td', { class: 'num', text: String(c.id) }),
      el('td', { class: 'path', title: c.target, text: c.path || '(none)' }),
      el('td', { class: c.status !== null && c.status !== 101 ? 'status-bad' : '', text: status }),
      el('td', {}, badge),
      el('td', { class: 'num', text: String(c.frames) }),
      el('td', { class: 'num', text: bytes(c.bytes) }),
      el('td', { class: 'num', text: duration(c.duration_ms) }),
      el('td', { class: c.open ? 'state-open' : 'state-closed', text: c.open ? 'open' : 'closed' }),
    );
    tr.addEventListener('click', () => select(c.id));
    tr.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); select(c.id); }
    });
    rows.push(tr);
  }
  // keep keyboard focus on the same connection across the redraw
  const focused = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.connId : undefined;
  tbody.replaceChildren(...rows);
  if (focused) {
    const again = tbody.querySelector(`tr[data-conn-id="${focused}"]`);
    if (again) again.focus();
  }
  $('conn-empty').hidden = state.conns.length > 0;
  $('conn-count').textContent = state.conns.length ? `(${state.conns.length})` : '';
}

function renderSummary(c) {
  const parts = [
    c.open ? 'open' : 'closed',
    c.status === null ? 'no response yet' : `status ${c.status}`,
    `${c.frames} frames (${c.frames_from_client} from the client, ${c.frames_from_server} from the server)`,
    bytes(c.bytes),
    duration(c.duration_ms),
  ];
  if (c.close) parts.push(`ended: ${c.close.reason}${c.close.detail ? ' – ' + c.close.detail : ''}`);
  if (c.frames_kept < c.frames) parts.push(`${c.frames - c.frames_kept} oldest frames trimmed from memory`);
  $('detail-summary').textContent = parts.join(' · ');
  const live = c.open && c.websocket;
  $('controls-off').hidden = live;
  for (const id of ['send-btn', 'close-btn']) $(id).disabled = !live;
  document.querySelectorAll('#inspector button').forEach((b) => { b.disabled = !live; });
}

async function select(id) {
  state.selected = id;
  state.generation++;
  state.selectedFrame = null;
  state.selectedFrameData = null;
  state.follow = true;
  renderConns();
  $('detail-body').hidden = false;
  $('detail-title').textContent = `Connection #${id}`;
  renderInspector();
  setStatus('', '');
  await Promise.all([refreshDetailNow(), resetFrames()]);
}

// ---------- detail: handshake and findings ----------

async function refreshDetailNow() {
  if (state.selected === null) return;
  const id = state.selected;
  const r = await api(`/api/connections/${id}`);
  if (!r.ok || state.selected !== id) return;
  state.detail = r.body;
  $('detail-title').textContent = `Connection #${id} ${r.body.target || ''}`;
  renderSummary(r.body);
  renderHandshake(r.body.handshake);
  renderFindings(r.body.findings, r.body.errors);
}
const refreshDetail = throttle(refreshDetailNow, 300);

// Pairs the headers of two views: same, changed (same name, other value),
// removed (only left) and added (only right), in the left view's order.
function diffHeaders(left, right) {
  const rows = [];
  const used = new Array(right.length).fill(false);
  const take = (pred) => {
    for (let j = 0; j < right.length; j++) {
      if (!used[j] && pred(right[j])) { used[j] = true; return right[j]; }
    }
    return null;
  };
  for (const h of left) {
    const lname = h[0].toLowerCase();
    const same = take((r) => r[0].toLowerCase() === lname && r[1] === h[1]);
    if (same) { rows.push({ kind: same[0] === h[0] ? 'same' : 'changed', left: h, right: same }); continue; }
    const changed = take((r) => r[0].toLowerCase() === lname);
    rows.push(changed ? { kind: 'changed', left: h, right: changed } : { kind: 'removed', left: h, right: null });
  }
  right.forEach((h, j) => { if (!used[j]) rows.push({ kind: 'added', left: null, right: h }); });
  return rows;
}

function firstLine(view, isRequest) {
  if (!view) return null;
  return isRequest ? `${view.method} ${view.target} ${view.version}` : `${view.version} ${view.status} ${view.reason}`;
}

function hsTable(title, leftName, rightName, left, right, isRequest) {
  const table = el('table', { class: 'hs-table' });
  table.append(el('caption', { class: 'hint-inline', text: title }));
  table.append(el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: leftName }), el('th', { scope: 'col', text: rightName }))));
  const tbody = el('tbody');
  const l1 = firstLine(left, isRequest);
  const r1 = firstLine(right, isRequest);
  const cell = (side, text, mark) => text === null
    ? el('td', { class: side + ' none', text: side === 'left' && !left || side === 'right' && !right ? '(did not happen)' : '' })
    : el('td', { class: side }, el('span', { class: 'mark', 'aria-hidden': 'true', text: mark }), text);
  tbody.append(el('tr', { class: 'line' + (l1 !== r1 && l1 && r1 ? ' changed' : '') }, cell('left', l1, ''), cell('right', r1, '')));
  const marks = { same: ' ', changed: '~', removed: '−', added: '+' };
  const labels = { same: '', changed: 'changed', removed: 'removed', added: 'added' };
  for (const row of diffHeaders(left ? left.headers : [], right ? right.headers : [])) {
    const tr = el('tr', { class: row.kind });
    if (labels[row.kind]) tr.setAttribute('title', labels[row.kind]);
    tr.append(
      cell('left', row.left ? `${row.left[0]}: ${row.left[1]}` : (left ? '' : null), row.left ? marks[row.kind] : ''),
      cell('right', row.right ? `${row.right[0]}: ${row.right[1]}` : (right ? '' : null), row.right ? marks[row.kind] : ''),
    );
    tbody.append(tr);
  }
  if (right && right.body_preview) {
    tbody.append(el('tr', {}, el('td', { class: 'left' }), el('td', { class: 'right', text: 'body: ' + right.body_preview })));
  }
  table.append(tbody);
  return table;
}

function renderHandshake(h) {
  const box = $('handshake');
  if (!h) {
    box.replaceChildren(el('p', { class: 'empty', text: 'No handshake was logged for this connection.' }));
    return;
  }
  const extra = [];
  if (h.upstream_addr) extra.push(`upstream ${h.upstream_addr}`);
  if (typeof h.duration_ms === 'number') extra.push(`answered in ${duration(h.duration_ms)}`);
  box.replaceChildren(
    hsTable('Request (− removed, + added, ~ changed on the way)', 'client sent', 'reached the upstream', h.client_request, h.upstream_request, true),
    hsTable('Response', 'upstream answered', 'client got', h.upstream_response, h.client_response, false),
    el('p', { class: 'hint-inline', text: extra.join(' · ') }),
  );
}

function renderFindings(findings, errors) {
  const ul = $('findings');
  const items = findings.map((f) => el('li', { class: f.severity },
    el('strong', { text: f.severity + ': ' }), f.message,
    el('span', { class: 'code', text: f.code }),
    f.hint ? el('p', { class: 'hint', text: f.hint }) : null,
    f.observed || f.expected || f.header
      ? el('p', { class: 'obs', text: [f.header && `header ${f.header}`, f.expected && `expected ${f.expected}`, f.observed && `observed ${f.observed}`].filter(Boolean).join(' · ') })
      : null,
  ));
  for (const e of errors || []) items.push(el('li', { class: 'error' }, el('strong', { text: 'error: ' }), e));
  if (!items.length) items.push(el('li', { class: 'none', text: 'No findings: the handshake and frames look right.' }));
  ul.replaceChildren(...items);
  $('findings-count').textContent = findings.length ? `(${findings.length})` : '';
}

// ---------- frames: a virtualised list ----------

const viewport = $('frames-viewport');
const spacer = $('frames-spacer');
const rowHeight = () => parseFloat(getComputedStyle(document.documentElement).getPropertyValue('--row')) || 24;

function filterQuery() {
  const p = new URLSearchParams();
  if ($('f-from').value) p.set('from', $('f-from').value);
  if ($('f-opcode').value) p.set('opcode', $('f-opcode').value);
  if ($('f-q').value) p.set('q', $('f-q').value);
  if ($('f-findings').checked) p.set('findings', '1');
  if ($('f-injected').checked) p.set('injected', '1');
  return p.toString();
}

function atBottom() {
  return viewport.scrollTop + viewport.clientHeight >= viewport.scrollHeight - rowHeight();
}

async function fetchPage(index) {
  const gen = state.generation;
  const id = state.selected;
  const q = state.frameFilter ? '&' + state.frameFilter : '';
  const r = await api(`/api/connections/${id}/frames?offset=${index * PAGE}&limit=${PAGE}${q}`);
  if (gen !== state.generation || !r.ok) return null;
  const total = Number(r.headers.get('X-Total-Count') || 0);
  const first = r.headers.get('X-First-Frame');
  applyTotals(total, first === null ? null : Number(first));
  state.pages.set(index, r.body);
  return r.body;
}

// New totals from the server. Frames only ever append, except when old ones
// are trimmed from memory: then, without filters, shift the view so the rows
// under the reader's eyes stay put.
function applyTotals(total, first) {
  const wasBottom = state.follow;
  if (state.first !== null && first !== null && first > state.first) {
    const gone = first - state.first;
    state.pages.clear();
    if (!state.frameFilter && !wasBottom) viewport.scrollTop = Math.max(0, viewport.scrollTop - gone * rowHeight());
  }
  state.first = first;
  if (total !== state.total) {
    // the last page we hold may have grown
    const lastPage = Math.floor(Math.max(0, state.total - 1) / PAGE);
    state.pages.delete(lastPage);
    state.total = total;
    spacer.style.height = (total * rowHeight()) + 'px';
  }
  if (wasBottom) viewport.scrollTop = viewport.scrollHeight;
  renderCount();
}

function renderCount() {
  const c = state.conns.find((x) => x.id === state.selected);
  const all = c ? c.frames_kept : state.total;
  $('frames-count').textContent = state.frameFilter
    ? `(${state.total} of ${all} match)`
    : `(${state.total})`;
  $('follow').textContent = state.follow ? 'following new frames' : 'paused: scroll to the bottom (or press End) to follow new frames';
}

async function resetFrames() {
  state.generation++;
  state.pages.clear();
  state.loading.clear();
  state.total = 0;
  state.first = null;
  state.frameFilter = filterQuery();
  spacer.style.height = '0px';
  spacer.replaceChildren();
  await refreshFramesNow();
}

// Learns the current total (and the newest page) and redraws.
async function refreshFramesNow() {
  if (state.selected === null) return;
  const lastPage = Math.floor(Math.max(0, state.total - 1) / PAGE);
  await fetchPage(lastPage);
  renderRows();
}
const refreshFrames = throttle(refreshFramesNow, 200);

function renderRows() {
  const h = rowHeight();
  const start = Math.max(0, Math.floor(viewport.scrollTop / h) - OVERSCAN);
  const end = Math.min(state.total, Math.ceil((viewport.scrollTop + viewport.clientHeight) / h) + OVERSCAN);
  const rows = [];
  for (let i = start; i < end; i++) {
    const page = Math.floor(i / PAGE);
    const frames = state.pages.get(page);
    const f = frames ? frames[i - page * PAGE] : undefined;
    if (!frames) requestPage(page);
    rows.push(frameRow(i, f, h));
  }
  spacer.replaceChildren(...rows);
}

function requestPage(page) {
  if (state.loading.has(page)) return;
  state.loading.add(page);
  const gen = state.generation;
  fetchPage(page).finally(() => {
    if (gen === state.generation) {
      state.loading.delete(page);
      renderRows();
    }
  });
}

function flagsOf(f) {
  const flags = [];
  if (f.findings) flags.push('⚠');
  if (f.injected) flags.push('inj');
  if (!f.fin) flags.push('frag');
  if (f.compressed) flags.push('z');
  if (f.truncated) flags.push('…');
  if (f.rsv1 && !f.compressed || f.rsv2 || f.rsv3) flags.push('rsv');
  return flags.join(' ');
}

function frameRow(i, f, h) {
  const row = el('div', {
    class: 'frame-row',
    role: 'option',
    'aria-posinset': String(i + 1),
    'aria-setsize': String(state.total),
  });
  row.style.top = (i * h) + 'px';
  if (!f) {
    row.append(el('span', { class: 'c-n', text: '…' }));
    return row;
  }
  row.id = 'frame-' + f.n;
  row.dataset.n = String(f.n);
  if (f.injected) row.classList.add('injected');
  if (f.findings) row.classList.add('flagged');
  row.setAttribute('aria-selected', f.n === state.selectedFrame ? 'true' : 'false');
  const toServer = f.from === 'client';
  let preview = f.preview;
  if (f.opcode === 'close' && f.close_code !== undefined) preview = `${f.close_code} ${f.close_name || ''}${f.close_reason ? ' “' + f.close_reason + '”' : ''}`;
  row.append(
    el('span', { class: 'c-n', text: String(f.n) }),
    el('span', { class: 'c-ts', text: clock(f.ts) }),
    el('span', { class: 'c-dir ' + (toServer ? 'dir-client' : 'dir-server'), title: toServer ? 'client → server' : 'server → client', text: toServer ? '→ srv' : '← cli' }),
    el('span', { class: 'c-op', text: f.opcode }),
    el('span', { class: 'c-len', text: String(f.len) }),
    el('span', { class: 'c-flags', text: flagsOf(f) }),
    el('span', { class: 'c-prev' + (f.encoding === 'hex' ? ' hex' : ''), text: preview.length > 400 ? preview.slice(0, 400) : preview }),
  );
  row.addEventListener('click', () => selectFrame(f, i));
  return row;
}

function frameAt(i) {
  const page = Math.floor(i / PAGE);
  const frames = state.pages.get(page);
  return frames ? frames[i - page * PAGE] : undefined;
}

function selectFrame(f, i) {
  state.selectedFrame = f.n;
  state.selectedFrameData = f;
  state.selectedIndex = i;
  viewport.setAttribute('aria-activedescendant', 'frame-' + f.n);
  renderRows();
  renderInspector();
}

viewport.addEventListener('scroll', () => {
  state.follow = atBottom();
  renderCount();
  renderRows();
});

viewport.addEventListener('keydown', (e) => {
  const h = rowHeight();
  let i = state.selectedIndex === undefined ? -1 : state.selectedIndex;
  if (e.key === 'ArrowDown') i = Math.min(state.total - 1, i + 1);
  else if (e.key === 'ArrowUp') i = Math.max(0, i - 1);
  else if (e.key === 'Home') i = 0;
  else if (e.key === 'End') { viewport.scrollTop = viewport.scrollHeight; state.follow = true; i = state.total - 1; }
  else return;
  e.preventDefault();
  if (i < 0) return;
  if (i * h < viewport.scrollTop) viewport.scrollTop = i * h;
  else if ((i + 1) * h > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = (i + 1) * h - viewport.clientHeight;
  const f = frameAt(i);
  if (f) selectFrame(f, i);
  else requestPage(Math.floor(i / PAGE));
});

window.addEventListener('resize', () => renderRows());

// ---------- inspector and replay ----------

function renderInspector() {
  const box = $('inspector');
  const f = state.selectedFrameData;
  if (!f) {
    box.replaceChildren(el('p', { class: 'empty', text: 'Select a frame to see all of it and replay it.' }));
    return;
  }
  const dl = el('dl');
  const add = (k, v) => { dl.append(el('dt', { text: k }), el('dd', { text: String(v) })); };
  add('frame', `#${f.n} at ${f.ts}`);
  add('from', f.from === 'client' ? 'client → server' : 'server → client');
  add('opcode', f.opcode + (f.fin ? '' : ' (not final: fragmented)'));
  add('length', `${f.len} bytes${f.compressed ? ' on the wire (compressed; preview inflated)' : ''}`);
  add('bits', `fin=${f.fin} rsv1=${f.rsv1} rsv2=${f.rsv2} rsv3=${f.rsv3} masked=${f.masked}`);
  if (f.close_code !== undefined) add('close', `${f.close_code} ${f.close_name || ''} ${f.close_reason || ''}`);
  if (f.injected) add('injected', 'yes: wstap inserted this frame');
  if (f.findings) add('findings', f.findings.join(', '));
  if (f.note) add('note', f.note);
  const shown = f.encoding === 'hex' ? 'hex' : 'text';
  const pre = el('pre', { 'aria-label': `payload preview (${shown})`, text: f.preview + (f.truncated ? '\n… (preview cut at --max-preview)' : '') });
  const actions = el('div', { class: 'actions' });
  const replayable = ['text', 'binary', 'ping'].includes(f.opcode) && f.fin && !f.truncated && !f.note;
  if (replayable) {
    const to = f.from === 'client' ? 'server' : 'client';
    const other = to === 'server' ? 'client' : 'server';
    actions.append(
      el('button', { type: 'button', 'data-replay': to, text: `Replay to ${to}` }),
      el('button', { type: 'button', class: 'secondary', 'data-replay': other, text: `Replay to ${other}` }),
    );
  } else {
    actions.append(el('p', { class: 'empty', text: 'Replay takes whole single-frame text, binary or ping messages.' }));
  }
  actions.querySelectorAll('button').forEach((b) => b.addEventListener('click', () => replay(f.n, b.dataset.replay)));
  box.replaceChildren(dl, pre, actions);
  const c = state.conns.find((x) => x.id === state.selected);
  if (c) renderSummary(c);
}

function setStatus(text, kind) {
  const s = $('control-status');
  s.textContent = text;
  s.className = 'control-status ' + (kind || '');
}

function report(r, what) {
  if (r.status === 200) setStatus(`${what}: done.`, 'ok');
  else if (r.status === 202) setStatus(`${what}: queued; it goes out at the next message boundary.`, 'ok');
  else setStatus(`${what} failed (${r.status}): ${r.body && r.body.error ? r.body.error : 'no details'}`, 'err');
}

async function replay(n, to) {
  setStatus(`Replaying frame ${n} to the ${to}…`, '');
  const r = await postJSON(`/api/connections/${state.selected}/frames/${n}/replay`, { to });
  report(r, `Replay of frame ${n} to the ${to}`);
}

$('send-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const form = e.target;
  const to = form.querySelector('input[name=to]:checked').value;
  const opcode = $('send-opcode').value;
  const data = $('send-data').value;
  setStatus(`Sending ${opcode} to the ${to}…`, '');
  const r = await postJSON(`/api/connections/${state.selected}/inject`, { to, opcode, data });
  report(r, `Send ${opcode} to the ${to}`);
});

$('close-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const code = Number($('close-code').value);
  const reason = $('close-reason').value;
  setStatus(`Closing with ${code}…`, '');
  const r = await postJSON(`/api/connections/${state.selected}/close`, { code, reason });
  report(r, `Close with ${code}`);
});

// ---------- filters ----------

let searchTimer = null;
for (const id of ['f-from', 'f-opcode', 'f-findings', 'f-injected']) {
  $(id).addEventListener('change', () => resetFrames());
}
$('f-q').addEventListener('input', () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => resetFrames(), 200);
});
$('filters').addEventListener('submit', (e) => { e.preventDefault(); resetFrames(); });

// ---------- live updates ----------

function setLive(text, cls) {
  const s = $('live-state');
  s.textContent = text;
  s.className = 'live-state ' + cls;
}

function connectEvents() {
  const es = new EventSource('/api/events');
  es.onopen = () => {
    setLive('live', 'live');
    refreshConns();
    refreshDetail();
    refreshFrames();
  };
  es.onmessage = (m) => {
    let ev;
    try { ev = JSON.parse(m.data); } catch (_) { return; }
    if (ev.conn === undefined) return;
    refreshConns();
    if (ev.conn === state.selected) {
      if (ev.event === 'frame') refreshFrames();
      else refreshDetail();
    }
  };
  es.addEventListener('resync', () => {
    // we fell behind the stream: reload everything we show
    refreshConns();
    refreshDetail();
    refreshFrames();
  });
  es.addEventListener('end', () => {
    setLive('proxy stopped', 'ended');
    es.close();
    refreshConns();
  });
  es.onerror = () => {
    if (es.readyState !== EventSource.CLOSED) setLive('reconnecting…', '');
  };
}

// durations of open connections keep growing
setInterval(() => {
  if (state.conns.some((c) => c.open)) refreshConns();
}, 1000);

connectEvents();
refreshConns();
