// The wscluster dashboard. It talks only to the gateway: the admin API (bearer token from
// the URL fragment, kept in sessionStorage, never in a cookie) and, for client cards, the
// public listener's WebSockets. Every value from the network goes in as text, never HTML.
'use strict';

const TOKEN_KEY = 'wscluster-admin-token';
const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The token arrives in the fragment (`#token=…`), which no request carries; it leaves the
// address bar at once.
(function takeToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
})();
const token = () => sessionStorage.getItem(TOKEN_KEY) || '';

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + token() };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) refused(await response.text());
  return response;
}

function refused(why) {
  $('refused-why').textContent = why.trim() || 'The admin API refused the token.';
  $('refused').hidden = false;
  $('main').hidden = true;
}

// ---- live state: Server-Sent Events read through fetch, so the token goes in a header.
let state = null;
let previous = null;
let arcs = null;
let following = false;

async function follow() {
  if (following) return;
  following = true;
  let backoff = 500;
  for (;;) {
    try {
      const response = await fetch('/admin/events', {
        headers: { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' },
        cache: 'no-store',
      });
      if (response.status === 401) {
        refused(await response.text());
        following = false;
        return;
      }
      if (!response.ok) throw new Error('status ' + response.status);
      $('refused').hidden = true;
      $('main').hidden = false;
      setLive(true);
      backoff = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          onEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      console.debug('events:', error);
    }
    setLive(false);
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

function setLive(live) {
  const pill = $('live');
  pill.textContent = live ? 'live' : 'offline';
  pill.classList.toggle('off', !live);
}

function onEvent(chunk) {
  let event = 'message';
  let data = '';
  for (const line of chunk.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data += line.slice(5).trim();
  }
  if (event === 'state' && data) render(JSON.parse(data));
}

function render(next) {
  previous = state;
  state = next;
  $('ring-version').textContent = 'v' + next.version;
  $('ring-label').textContent = 'v' + next.version;
  $('total-connections').textContent = next.connections;
  renderBackends(next);
  if (next.arcs) renderRing(next);
  renderShares(next);
  renderMigrations(next);
  if (next.cluster) {
    renderReplicas(next.cluster);
    const own = next.cluster.replicas.find((r) => r.own);
    if (own) {
      // An upgrade's new process says what it took over from the old one.
      const taken = own.handover
        ? ` · took over ${own.handover.resumed} websockets in ${own.handover.batches} batches` +
          ` (${own.handover.elapsed})` +
          (own.handover.refused ? `, ${own.handover.refused} refused` : '') +
          (own.handover.failed ? `, broken off: ${own.handover.failed}` : '')
        : '';
      $('process').textContent =
        `v${own.build} · pid ${own.pid} · since ${new Date(own.started_ms).toLocaleString()}` +
        taken;
    }
  }
  try {
    renderCharts(next);
  } catch (error) {
    console.warn('charts:', error); // the rest of the page stays live
  }
}

// ---- backends
const colour = (id) => {
  let h = 0;
  for (const c of id) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${(h * 137) % 360} 65% 48%)`;
};

const rows = new Map();

function renderBackends(s) {
  const body = document.querySelector('#backends tbody');
  const seen = new Set();
  const seconds = previous ? (s.at_ms - previous.at_ms) / 1000 : 0;
  for (const member of [...s.members, ...s.others]) {
    seen.add(member.id);
    let row = rows.get(member.id);
    if (!row) {
      row = backendRow(member.id);
      rows.set(member.id, row);
    }
    body.appendChild(row.tr); // keeps the server's order
    row.tr.dataset.state = member.state;
    row.dot.className = 'dot ' + member.state;
    row.dot.title = member.state;
    row.address.textContent = member.address || '–';
    row.node.textContent = member.node ? ' on ' + member.node : '';
    row.address.appendChild(row.node); // a Swarm task's node, where the source names it
    if (document.activeElement !== row.weight) row.weight.value = member.weight;
    row.connections.textContent = member.connections;
    const before = previous && [...previous.members, ...previous.others].find((m) => m.id === member.id);
    if (before && seconds > 0) {
      const t = member.traffic, b = before.traffic;
      const msgs = t.to_backend.messages + t.to_client.messages - b.to_backend.messages - b.to_client.messages;
      const bytes = t.to_backend.bytes + t.to_client.bytes - b.to_backend.bytes - b.to_client.bytes;
      row.msgs.textContent = rate(msgs / seconds);
      row.bytes.textContent = rate(bytes / seconds);
    }
  }
  for (const [id, row] of rows) {
    if (!seen.has(id)) {
      row.tr.remove();
      rows.delete(id);
    }
  }
  $('add-instance').disabled = !s.scaler;
  $('add-instance').title = s.scaler ? 'start one more backend with the configured scaler' : 'this gateway has no scaler';
}

function rate(x) {
  if (x >= 1e6) return (x / 1e6).toFixed(1) + 'M';
  if (x >= 1e3) return (x / 1e3).toFixed(1) + 'k';
  return x.toFixed(x < 10 ? 1 : 0);
}

function cell(tr, className) {
  const td = document.createElement('td');
  if (className) td.className = className;
  tr.appendChild(td);
  return td;
}

function backendRow(id) {
  const tr = document.createElement('tr');
  tr.dataset.id = id;
  const dot = document.createElement('span');
  cell(tr).appendChild(dot);
  const name = cell(tr);
  name.textContent = id;
  name.className = 'id';
  const address = cell(tr);
  const node = document.createElement('span');
  node.className = 'node';
  const weight = document.createElement('input');
  weight.type = 'number';
  weight.min = 0;
  weight.className = 'weight';
  weight.setAttribute('aria-label', 'weight of ' + id);
  const weightCell = cell(tr);
  weightCell.appendChild(weight);
  const setWeight = button('set', () => act('PATCH', id, { weight: Number(weight.value) }, `weight of ${id} set to ${weight.value}`));
  setWeight.className = 'set-weight';
  weightCell.appendChild(setWeight);
  const connections = cell(tr, 'n connections');
  const msgs = cell(tr, 'n msgs');
  const bytes = cell(tr, 'n bytes');
  const actions = cell(tr);
  const drain = button('drain', () => act('PATCH', id, { weight: 0 }, `${id} drained: weight 0`));
  drain.className = 'drain';
  const remove = button('remove', () => {
    if (remove.dataset.armed !== 'yes') {
      remove.dataset.armed = 'yes';
      remove.textContent = 'confirm remove';
      setTimeout(() => { remove.dataset.armed = ''; remove.textContent = 'remove'; }, 4000);
      return;
    }
    act('DELETE', id, undefined, `${id} removed`);
  });
  remove.className = 'remove danger';
  actions.append(drain, ' ', remove);
  return { tr, dot, address, node, weight, connections, msgs, bytes };
}

function button(text, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.addEventListener('click', onClick);
  return b;
}

async function act(method, id, body, done) {
  const note = $('action-result');
  note.className = 'note';
  note.textContent = `${method} ${id}…`;
  try {
    const response = await api(method, '/admin/backends/' + encodeURIComponent(id), body);
    const text = await response.text();
    note.textContent = response.ok ? done : `${response.status}: ${text.trim()}`;
    if (!response.ok) note.className = 'note error';
  } catch (error) {
    note.className = 'note error';
    note.textContent = String(error);
  }
}

$('add-instance').addEventListener('click', async () => {
  const note = $('action-result');
  note.className = 'note';
  note.textContent = 'starting a backend…';
  const response = await api('POST', '/admin/backends', {});
  const text = await response.text();
  if (response.ok) {
    note.textContent = 'started ' + JSON.parse(text).id;
  } else {
    note.className = 'note error';
    note.textContent = `${response.status}: ${text.trim()}`;
  }
});

// ---- the ring: arcs of the circle by owner; after a change the ranges that moved flash.
const SVG = 'http://www.w3.org/2000/svg';

function point(fraction, r) {
  const angle = fraction * 2 * Math.PI - Math.PI / 2;
  return `${(r * Math.cos(angle)).toFixed(2)} ${(r * Math.sin(angle)).toFixed(2)}`;
}

function arcPath(from, to, r) {
  if (to - from >= 0.9999) return `M ${point(0, r)} A ${r} ${r} 0 1 1 ${point(0.5, r)} A ${r} ${r} 0 1 1 ${point(0, r)}`;
  const large = to - from > 0.5 ? 1 : 0;
  return `M ${point(from, r)} A ${r} ${r} 0 ${large} 1 ${point(to, r)}`;
}

// Arcs as [{from, to, owner}] covering [0, 1).
function expand(ring) {
  const out = [];
  const { starts, owners, ids } = ring;
  for (let i = 0; i < starts.length; i++) {
    out.push({ from: starts[i], to: i + 1 < starts.length ? starts[i + 1] : 1, owner: ids[owners[i]] });
  }
  return out;
}

function ownerAt(list, x) {
  for (const arc of list) if (x >= arc.from && x < arc.to) return arc.owner;
  return null;
}

function renderRing(s) {
  const next = expand(s.arcs);
  const group = $('ring-arcs');
  group.replaceChildren();
  for (const arc of next) {
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', arcPath(arc.from, arc.to, 90));
    path.setAttribute('stroke', colour(arc.owner));
    const title = document.createElementNS(SVG, 'title');
    title.textContent = arc.owner;
    path.appendChild(title);
    group.appendChild(path);
  }
  if (arcs) {
    // Every boundary of either layout; an interval whose owner changed moved.
    const cuts = [...new Set([...arcs, ...next].flatMap((a) => [a.from, a.to]))].sort((a, b) => a - b);
    const moved = $('ring-moved');
    moved.replaceChildren();
    let count = 0;
    for (let i = 0; i + 1 < cuts.length; i++) {
      const mid = (cuts[i] + cuts[i + 1]) / 2;
      if (ownerAt(arcs, mid) !== ownerAt(next, mid)) {
        const path = document.createElementNS(SVG, 'path');
        path.setAttribute('d', arcPath(cuts[i], cuts[i + 1], 90));
        moved.appendChild(path);
        count++;
      }
    }
    moved.dataset.moved = count;
    setTimeout(() => { if (moved.dataset.moved == count) moved.replaceChildren(); }, 4000);
  }
  arcs = next;
}

function renderShares(s) {
  const list = $('shares');
  list.replaceChildren();
  // Inside the ring: each member's share as one arc, for a ring with too many points to
  // read its shares off.
  const inner = $('ring-shares');
  inner.replaceChildren();
  let at = 0;
  for (const member of s.members) {
    if (member.share <= 0) continue;
    const path = document.createElementNS(SVG, 'path');
    path.setAttribute('d', arcPath(at, Math.min(1, at + member.share), 66));
    path.setAttribute('stroke', colour(member.id));
    inner.appendChild(path);
    at += member.share;
  }
  for (const member of s.members) {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = colour(member.id);
    const text = document.createElement('span');
    text.textContent = `${member.id} ${(member.share * 100).toFixed(1)} %`;
    li.append(swatch, text);
    list.appendChild(li);
  }
}

// ---- migrations
function renderMigrations(s) {
  const m = s.migrations;
  $('m-moved').textContent = m.moved;
  $('m-fell-back').textContent = m.fell_back;
  $('m-failed').textContent = m.failed;
  $('m-in-flight').textContent = m.in_flight;
  $('m-off-owner').textContent = s.off_owner;
  $('off-owner-box').classList.toggle('bad', s.off_owner > 0 && m.in_flight === 0);
  const reasons = Object.entries(m.fell_back_by_reason).filter(([, n]) => n > 0);
  $('fell-back-reasons').textContent = reasons.length
    ? 'fell back: ' + reasons.map(([k, n]) => `${k} ${n}`).join(', ')
    : '';
  const body = document.querySelector('#moves tbody');
  body.replaceChildren();
  for (const move of s.recent) {
    const tr = document.createElement('tr');
    cell(tr).textContent = new Date(move.unix_ms).toLocaleTimeString();
    cell(tr).textContent = move.key;
    cell(tr).textContent = `${move.from} → ${move.to || '–'}`;
    cell(tr).textContent = move.policy;
    cell(tr).textContent = move.outcome;
    body.appendChild(tr);
  }
}

// ---- gateway replicas ([cluster]): each one's ring, the odd one out marked.
function renderReplicas(c) {
  $('replicas-panel').hidden = !c.configured;
  if (!c.configured) return;
  const verdict = $('replicas-verdict');
  verdict.textContent = c.agree ? 'agree' : 'disagree';
  verdict.classList.toggle('bad', !c.agree);
  const body = document.querySelector('#replicas tbody');
  body.replaceChildren();
  for (const r of c.replicas) {
    const tr = document.createElement('tr');
    const state = r.agrees === true ? 'agrees' : r.agrees === false ? 'disagrees' : 'unreachable';
    tr.className = state;
    const dot = document.createElement('span');
    dot.className = 'dot ' + (state === 'agrees' ? 'up' : 'unhealthy');
    cell(tr).appendChild(dot);
    cell(tr).textContent = (r.node || r.address || 'this gateway') + (r.own ? ' (this one)' : '');
    cell(tr).textContent = r.address || '–';
    cell(tr, 'n').textContent = r.version === undefined ? '–' : 'v' + r.version;
    const digest = cell(tr, 'digest');
    digest.textContent = r.digest ? r.digest.slice(0, 12) : '–';
    digest.title = r.digest || '';
    cell(tr, 'n').textContent = r.members ?? '–';
    cell(tr, 'n').textContent = r.connections ?? '–';
    cell(tr).textContent = r.build || '–';
    cell(tr).textContent = r.started_ms ? new Date(r.started_ms).toLocaleString() : '–';
    const what = cell(tr);
    what.textContent = state;
    if (r.error) what.title = r.error;
    body.appendChild(tr);
  }
  const asked = c.at_ms ? 'asked ' + new Date(c.at_ms).toLocaleTimeString() : 'not asked yet';
  $('replicas-note').textContent =
    `${asked}; disagreed ${c.disagreed_seconds.toFixed(0)} s in all. A replica disagrees when its ring digest is not the majority's.`;
}

// ---- client cards: real WebSockets to the public listener, as a chosen user.
const clients = new Map();

function publicTls() {
  return (state && state.public_tls) || location.protocol === 'https:';
}

function publicOrigin() {
  const [host, port] = splitAddress(state ? state.public : location.host);
  const unspecified = host === '0.0.0.0' || host === '::' || host === '[::]';
  const name = unspecified ? location.hostname : host;
  return `${name.includes(':') && !name.startsWith('[') ? `[${name}]` : name}:${port}`;
}

function publicUrl(user) {
  const u = encodeURIComponent(user);
  return `${publicTls() ? 'wss' : 'ws'}://${publicOrigin()}/connect/${u}?userId=${u}`;
}

// A browser sends a WebSocket over HTTP/2 (RFC 8441) only on an HTTP/2 connection it already
// holds to that origin; otherwise it opens an HTTP/1.1 one. One request opens it (answered
// 400 for lack of a key; what matters is the connection), with credentials, as a WebSocket's.
let warmed = null;
function warmPublicConnection() {
  if (!publicTls()) return Promise.resolve();
  warmed = warmed || fetch(`https://${publicOrigin()}/`, { mode: 'no-cors', credentials: 'include' })
    .catch(() => {});
  return warmed;
}

function splitAddress(address) {
  const at = address.lastIndexOf(':');
  return [address.slice(0, at), address.slice(at + 1)];
}

function addClient(user) {
  const card = $('card-template').content.firstElementChild.cloneNode(true);
  const client = { user, card, ws: null, attempts: 0, reconnects: 0, moves: 0, server: null, closed: false, timer: null };
  card.dataset.user = user;
  card.dataset.reconnects = 0;
  card.dataset.moves = 0;
  card.querySelector('.user').textContent = user;
  card.querySelector('.close').addEventListener('click', () => {
    client.closed = true;
    clearTimeout(client.timer);
    if (client.ws) client.ws.close(1000, 'closed from the dashboard');
    card.remove();
    clients.get(user)?.delete(client);
  });
  $('cards').prepend(card);
  if (!clients.has(user)) clients.set(user, new Set());
  clients.get(user).add(client);
  connect(client);
}

function status(client, text) {
  client.card.querySelector('.status').textContent = text;
}

function message(client, text) {
  const list = client.card.querySelector('.messages');
  const li = document.createElement('li');
  li.textContent = text;
  list.appendChild(li);
  while (list.children.length > 50) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

async function connect(client) {
  status(client, 'connecting…');
  await warmPublicConnection();
  const ws = new WebSocket(publicUrl(client.user));
  client.ws = ws;
  ws.addEventListener('open', () => {
    client.attempts = 0;
    client.card.dataset.open = 'yes';
    status(client, client.reconnects ? `open · reconnected ${client.reconnects}×` : 'open');
  });
  ws.addEventListener('message', (event) => {
    let m;
    try { m = JSON.parse(event.data); } catch { m = { type: 'text', content: String(event.data) }; }
    if (m.type === 'connected') {
      const badge = client.card.querySelector('.server');
      if (m.migratedFrom && client.server) {
        client.moves++;
        client.card.dataset.moves = client.moves;
        badge.classList.add('moved');
        setTimeout(() => badge.classList.remove('moved'), 3000);
        message(client, `moved live ${m.migratedFrom} → ${m.server}, no reconnect`);
      }
      client.server = m.server;
      client.card.dataset.server = m.server;
      badge.textContent = m.server;
    } else if (m.type === 'message') {
      message(client, `pushed: ${m.content}`);
    } else if (m.type === 'echo') {
      message(client, `echo: ${m.content}`);
    } else {
      message(client, String(event.data));
    }
  });
  ws.addEventListener('close', (event) => {
    client.card.dataset.open = '';
    if (client.closed || client.ws !== ws) return;
    // Backoff with jitter; a 1012 (the gateway moving us) or 1001 comes back quickly.
    const quick = event.code === 1012 || event.code === 1001;
    const base = quick ? 200 : Math.min(1000 * 2 ** client.attempts, 30000);
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    client.attempts++;
    status(client, `closed (${event.code}${event.reason ? ': ' + event.reason : ''}); reconnecting in ${(delay / 1000).toFixed(1)} s`);
    client.timer = setTimeout(() => {
      client.reconnects++;
      client.card.dataset.reconnects = client.reconnects;
      connect(client);
    }, delay);
  });
}

$('client-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('client-user');
  addClient(input.value.trim());
  input.value = '';
});

$('push-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const note = $('push-result');
  const user = $('push-user').value.trim();
  const text = $('push-message').value;
  note.className = 'note';
  const response = await api('POST', '/admin/send', { userId: user, message: text });
  const body = await response.text();
  if (!response.ok) note.className = 'note error';
  note.textContent = `${response.status}: ${body.trim()}`;
});

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
  $('token-input').value = '';
  follow();
});

follow();

// ---- charts: the last 10 minutes, from the server's samples (the first state's `history`)
// and then every live state
const WINDOW_MS = 10 * 60 * 1000;
const SVG_NS = 'http://www.w3.org/2000/svg';
let points = [];

// The same point as the server's history::point.
function pointOf(s) {
  const backends = {};
  for (const m of [...s.members, ...s.others]) {
    backends[m.id] = { c: m.connections, m: m.traffic.to_backend.messages + m.traffic.to_client.messages };
  }
  return { at_ms: s.at_ms, version: s.version, moved: s.migrations.moved, backends };
}

// Per second between point i-1 and i of what `read` takes from a point; null where unknown.
// A total that went down (its connections closed) counts as 0.
function rateAt(i, read) {
  if (i === 0) return null;
  const a = read(points[i - 1]), b = read(points[i]);
  const seconds = (points[i].at_ms - points[i - 1].at_ms) / 1000;
  if (a == null || b == null || seconds <= 0) return null;
  return Math.max(0, (b - a) / seconds);
}

function renderCharts(s) {
  if (s.history) points = s.history.slice();
  points.push(pointOf(s));
  points = points.filter((p) => p.at_ms >= s.at_ms - WINDOW_MS);
  const ids = [...new Set(points.flatMap((p) => Object.keys(p.backends)))];
  const series = (value) => ids.map((id) => ({
    id,
    values: points.map((p, i) => [p.at_ms, value(p, i, id)]).filter(([, v]) => v != null),
  }));
  const of = (id, field) => (p) => (p.backends[id] ? p.backends[id][field] : null);
  chart('chart-connections', 'max-connections', s.at_ms, series((p, i, id) => of(id, 'c')(p)));
  chart('chart-messages', 'max-messages', s.at_ms, series((p, i, id) => rateAt(i, of(id, 'm'))));
  const moves = points.map((p, i) => [p.at_ms, rateAt(i, (q) => q.moved)]).filter(([, v]) => v != null);
  chart('chart-moves', 'max-moves', s.at_ms, [{ id: 'moves', values: moves }]);
}

function chart(id, maxId, now, series) {
  const svg = $(id);
  const width = 600, height = 120;
  let max = 1; // a loop, not Math.max(...): thousands of points are too many arguments
  for (const line of series) for (const [, v] of line.values) if (v > max) max = v;
  const x = (t) => (width * (1 - (now - t) / WINDOW_MS)).toFixed(1);
  const y = (v) => (height - 4 - ((height - 8) * v) / max).toFixed(1);
  const drawn = [];
  for (let i = 1; i < points.length; i++) {
    if (points[i].version === points[i - 1].version) continue;
    const mark = document.createElementNS(SVG_NS, 'line');
    mark.setAttribute('class', 'ring-change');
    mark.setAttribute('x1', x(points[i].at_ms));
    mark.setAttribute('x2', x(points[i].at_ms));
    mark.setAttribute('y1', 0);
    mark.setAttribute('y2', height);
    drawn.push(mark);
  }
  for (const line of series) {
    if (line.values.length === 0) continue;
    const polyline = document.createElementNS(SVG_NS, 'polyline');
    polyline.setAttribute('points', line.values.map(([t, v]) => `${x(t)},${y(v)}`).join(' '));
    polyline.setAttribute('stroke', line.id === 'moves' ? 'var(--ink)' : colour(line.id));
    polyline.dataset.id = line.id;
    drawn.push(polyline);
  }
  svg.replaceChildren(...drawn);
  $(maxId).textContent = '(top: ' + rate(max) + ')';
}
