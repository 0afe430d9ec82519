// The demo player. Each tab plays one fake stream through the streamcap
// client, shows its state and the user's active streams, and offers a
// take-over when the account is full. Plain ES module, no dependencies.

import { StreamcapClient } from './streamcap.js';

const $ = (id) => document.getElementById(id);

// The API lives where the page does, minus `/demo` (so a path prefix in
// front of streamcap keeps working).
const baseUrl = location.origin + location.pathname.replace(/\/demo\/?$/, '');

// A random stream id per playback: a new one for each page load, and after
// an eviction or a revocation, whose tombstone refuses the old id for a while.
let streamId = `tab-${randomHex(4)}`;

const CONTENT_ID = 'demo-film';
const DEVICE_ID = `${browserName()} tab`;
// How often the list of streams is fetched while the page is open.
const LIST_EVERY_MS = 2000;

const STATE_TEXT = {
  idle: 'idle',
  starting: 'starting…',
  watching: 'watching',
  refused: 'refused: the account is full',
  evicted: 'stopped: watching on another device',
  revoked: 'stopped: revoked by the service',
  replaced: 'stopped: this stream was opened again elsewhere',
  stopped: 'stopped',
  reconnecting: 'reconnecting…',
  suspended: 'paused: this tab is hidden',
  error: 'error',
};

let client = null;
let state = 'idle';
// The latest list of the user's live streams (oldest first) and the limit.
let streams = [];
let limit = null;
// Playback time of the fake stream, advanced only while watching.
let played = 0;

// Milliseconds on a clock shared by every tab of this browser, so that
// times taken in two tabs can be compared.
function now() {
  return performance.timeOrigin + performance.now();
}

function randomHex(bytes) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

function browserName() {
  const ua = navigator.userAgent;
  if (/Edg\//.test(ua)) return 'Edge';
  if (/Chrom(e|ium)\//.test(ua)) return 'Chromium';
  if (/Firefox\//.test(ua)) return 'Firefox';
  if (/Safari\//.test(ua)) return 'Safari';
  return 'browser';
}

function settings() {
  return {
    userId: $('user').value.trim(),
    mode: $('mode').value,
    onHidden: $('on-hidden').value,
    token: $('token').value.trim(),
  };
}

// --- state and log ---------------------------------------------------------

function setState(next, detail = '') {
  state = next;
  const el = $('state');
  el.dataset.state = next;
  el.dataset.since = String(now());
  el.textContent = next === 'error' && detail ? `error: ${detail}` : STATE_TEXT[next];
  $('detail').textContent = next === 'error' ? '' : detail;
  $('refused').hidden = next !== 'refused';
  const playing = ['starting', 'watching', 'reconnecting', 'suspended'].includes(next);
  $('play').disabled = playing;
  $('stop').disabled = !playing;
  document.title = `${titleMark(next)} ${STATE_TEXT[next]} · streamcap demo`;
  renderStreams();
}

function titleMark(s) {
  const marks = { watching: '▶', refused: '⛔', starting: '…', reconnecting: '…', suspended: '⏸', error: '⚠' };
  return marks[s] || '■';
}

function log(message) {
  const li = document.createElement('li');
  const t = new Date();
  const time = document.createElement('time');
  time.textContent = t.toLocaleTimeString([], { hour12: false }) + '.' + String(t.getMilliseconds()).padStart(3, '0');
  li.append(time, ' ', message);
  const list = $('log');
  list.prepend(li);
  while (list.children.length > 50) list.lastElementChild.remove();
}

// --- the client ------------------------------------------------------------

async function play(evict = []) {
  const s = settings();
  if (!s.userId && !s.token) {
    setState('error', 'enter a user id, or a token to play as its user');
    return;
  }
  const fresh = state === 'evicted' || state === 'revoked' || state === 'replaced';
  setState('starting', `${s.mode === 'websocket' ? 'WebSocket' : 'heartbeat'} mode`);
  // The same stream id plays again: its old lease is released first.
  const previous = client;
  client = null;
  if (previous) await previous.stop();
  if (fresh) {
    streamId = `tab-${randomHex(4)}`;
    $('stream-id').textContent = streamId;
  }
  const c = new StreamcapClient({
    baseUrl,
    userId: s.userId || undefined,
    streamId,
    token: s.token || undefined,
    deviceId: DEVICE_ID,
    contentId: CONTENT_ID,
    mode: s.mode,
    onHidden: s.onHidden,
  });
  client = c;
  // Events of a client this tab has since replaced are ignored.
  const on = (name, handle) => listen(c, name, (detail) => c === client && handle(detail || {}));
  on('granted', granted);
  on('renewed', renewed);
  on('refused', refused);
  on('revoked', revoked);
  on('error', failed);
  on('state', changed);
  log(evict.length ? `take-over: asking to stop ${evict.join(', ')}` : `start (${s.mode})`);
  if (evict.length) c.takeOver(evict);
  else c.start();
}

// The client's events, whether it offers `on(name, fn)` or is an EventTarget.
function listen(c, name, handle) {
  if (typeof c.on === 'function') c.on(name, handle);
  else c.addEventListener(name, (e) => handle(e.detail));
}

function granted(lease) {
  const takeOver = $('take-over');
  if (takeOver.dataset.clickedAt && !takeOver.dataset.answeredAt) takeOver.dataset.answeredAt = String(now());
  if (lease.limit != null) limit = lease.limit;
  const evicted = (lease.evicted || []).map((e) => e.stream_id ?? e);
  const counted = lease.active_streams == null ? '' : `; ${lease.active_streams} of ${lease.limit} streams`;
  setState('watching', `lease until ${clock(lease.expires_at)}${counted}`);
  log(evicted.length ? `granted, after stopping ${evicted.join(', ')}` : 'granted');
  refreshStreams();
}

// Also after a reconnection that got the lease again.
function renewed(r) {
  const counted = r.active_streams == null ? '' : `; ${r.active_streams} of ${limit ?? '?'} streams`;
  if (state === 'watching') $('detail').textContent = `lease until ${clock(r.expires_at)}${counted}`;
  else setState('watching', `lease until ${clock(r.expires_at)}${counted}`);
  log('renewed');
  refreshStreams();
}

function refused(problem) {
  if (Array.isArray(problem.active_streams)) streams = problem.active_streams;
  if (problem.limit != null) limit = problem.limit;
  setState('refused', problem.detail || '');
  log(`refused: ${streams.length} of ${limit} streams already playing`);
  refreshStreams();
}

function revoked(r) {
  const next = { evicted_by_new_stream: 'evicted', replaced: 'replaced' }[r.reason] || 'revoked';
  setState(next, r.by_stream_id ? `stream ${r.by_stream_id} took this seat` : '');
  log(next === 'evicted' ? `evicted by ${r.by_stream_id ?? 'another stream'}` : `${next} (${r.reason})`);
  refreshStreams();
}

// The client retries what may pass (429, 503, a lost connection) by itself
// and says when; anything else ends this attempt.
function failed(e) {
  const problem = e.problem || {};
  const status = e.status ?? problem.status;
  const what = problem.title || e.cause?.message || (e.cause ? String(e.cause) : 'failed');
  const about = `${what}${status ? ` (${status})` : ''}`;
  if (e.retryInMs != null) {
    $('detail').textContent = `${about}; retrying in ${(e.retryInMs / 1000).toFixed(1)} s`;
    log(`${e.phase || 'request'} failed: ${about}; retrying in ${Math.round(e.retryInMs)} ms`);
    return;
  }
  log(`${e.phase || 'request'} failed: ${about}${problem.detail ? `: ${problem.detail}` : ''}`);
  if (e.phase === 'release') return;
  setState('error', `${about}${status === 401 ? ': enter a token' : ''}`);
}

// The client's own states that the events above do not cover.
function changed({ state: next }) {
  if (next === 'reconnecting' || next === 'suspended') {
    setState(next);
    log(next === 'suspended' ? 'released: the tab is hidden' : 'reconnecting');
  }
}

async function stop() {
  const previous = client;
  client = null;
  if (previous) await previous.stop();
  setState('stopped');
  log('stopped by you');
  refreshStreams();
}

// The streams to stop so that this tab gets a seat: the oldest ones.
function toEvict() {
  const others = streams.filter((s) => s.stream_id !== streamId);
  const over = limit == null ? 1 : others.length - limit + 1;
  return others.slice(0, Math.max(over, 0)).map((s) => s.stream_id);
}

function takeOver(ids) {
  const button = $('take-over');
  button.dataset.clickedAt = String(now());
  delete button.dataset.answeredAt;
  if (!client) {
    play(ids);
    return;
  }
  setState('starting', 'take-over');
  // A seat freed meanwhile: nothing to stop.
  if (ids.length === 0) {
    log('a seat is free: start');
    client.start();
    return;
  }
  log(`take-over: asking to stop ${ids.join(', ')}`);
  client.takeOver(ids);
}

// --- the list of streams ---------------------------------------------------

let listing = null;

async function refreshStreams() {
  const s = settings();
  if (!s.userId && !s.token) return;
  if (listing) return listing;
  const path = s.userId ? `/v1/users/${encodeURIComponent(s.userId)}/streams` : '/v1/me/streams';
  const headers = s.token ? { authorization: `Bearer ${s.token}` } : {};
  listing = (async () => {
    try {
      const res = await fetch(baseUrl + path, { headers, cache: 'no-store' });
      const body = await res.json();
      if (!res.ok) {
        $('streams-note').textContent = `cannot list the streams: ${body.title || res.status}`;
        return;
      }
      streams = body.active_streams;
      limit = body.limit;
      $('streams-note').textContent = '';
      renderStreams();
    } catch (e) {
      $('streams-note').textContent = `cannot list the streams: ${e.message}`;
    } finally {
      listing = null;
    }
  })();
  return listing;
}

function renderStreams() {
  const list = $('streams');
  const evict = state === 'refused' ? toEvict() : [];
  list.replaceChildren(
    ...streams.map((s, i) => {
      const li = document.createElement('li');
      li.dataset.streamId = s.stream_id;
      const id = document.createElement('code');
      id.textContent = s.stream_id;
      li.append(id);
      if (s.stream_id === streamId) li.append(badge('this tab', 'mine'));
      if (i === 0) li.append(badge('oldest', 'oldest'));
      if (evict.includes(s.stream_id)) {
        li.classList.add('will-stop');
        li.append(badge('take-over stops it', 'stops'));
      }
      const about = document.createElement('span');
      about.className = 'about';
      about.textContent = [s.device_id, s.content_id, `since ${clock(s.started_at)}`].filter(Boolean).join(' · ');
      li.append(about);
      if (state === 'refused' && s.stream_id !== streamId) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'evict-one';
        b.textContent = 'Watch here instead of this one';
        b.addEventListener('click', () => takeOver([s.stream_id]));
        li.append(b);
      }
      return li;
    }),
  );
  $('streams-count').textContent = limit == null ? '' : `(${streams.length} of ${limit})`;
  const free = limit != null && streams.length < limit;
  if (state === 'refused') {
    $('take-over-hint').textContent = free
      ? 'A seat is free now: press Play.'
      : `This stops ${evict.join(', ')} and plays here.`;
  }
}

function badge(text, kind) {
  const b = document.createElement('span');
  b.className = `badge ${kind}`;
  b.textContent = text;
  return b;
}

function clock(iso) {
  if (!iso) return '?';
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}

// --- the fake stream -------------------------------------------------------

const screen = $('screen').getContext('2d');
const FILM_SECONDS = 600;
let last = null;

function frame(t) {
  if (last !== null && state === 'watching') played += (t - last) / 1000;
  last = t;
  draw();
  requestAnimationFrame(frame);
}

function draw() {
  const { width: w, height: h } = screen.canvas;
  const on = state === 'watching';
  const hue = (played * 24) % 360;
  const g = screen.createLinearGradient(0, 0, w, h);
  g.addColorStop(0, `hsl(${hue} 70% ${on ? 45 : 18}%)`);
  g.addColorStop(1, `hsl(${(hue + 120) % 360} 70% ${on ? 30 : 12}%)`);
  screen.fillStyle = g;
  screen.fillRect(0, 0, w, h);
  // Bars drifting across the picture, so that playing is plain to see.
  screen.fillStyle = on ? 'rgba(255,255,255,0.16)' : 'rgba(255,255,255,0.05)';
  for (let i = 0; i < 6; i++) {
    const x = ((played * 60 + i * 130) % (w + 80)) - 80;
    screen.fillRect(x, 0, 40, h);
  }
  screen.fillStyle = on ? '#fff' : '#aaa';
  screen.font = '600 22px system-ui, sans-serif';
  screen.fillText(`${CONTENT_ID} · ${streamId}`, 24, 40);
  screen.font = '600 56px ui-monospace, monospace';
  screen.fillText(timecode(played), 24, h / 2 + 20);
  if (!on) {
    screen.font = '600 26px system-ui, sans-serif';
    screen.fillStyle = '#fff';
    screen.fillText(STATE_TEXT[state], 24, h / 2 + 80, w - 48);
  }
  // Progress through the fake film.
  screen.fillStyle = 'rgba(0,0,0,0.4)';
  screen.fillRect(0, h - 10, w, 10);
  screen.fillStyle = on ? '#e33' : '#777';
  screen.fillRect(0, h - 10, (w * (played % FILM_SECONDS)) / FILM_SECONDS, 10);
}

function timecode(s) {
  const t = Math.floor(s);
  const pad = (n) => String(n).padStart(2, '0');
  return `${pad(Math.floor(t / 3600))}:${pad(Math.floor(t / 60) % 60)}:${pad(t % 60)}`;
}

// --- wiring ----------------------------------------------------------------

function readQuery() {
  const q = new URLSearchParams(location.search);
  $('user').value = q.has('user') ? q.get('user') : 'demo-user';
  $('mode').value = q.get('mode') === 'heartbeat' ? 'heartbeat' : 'websocket';
  $('on-hidden').value = q.get('hidden') === 'release' ? 'release' : 'keep';
  $('stream-id').textContent = streamId;
  updateLinks();
}

// The address of this page with its settings (never the token), so that
// another tab opens the same way.
function updateLinks() {
  const s = settings();
  const q = new URLSearchParams({ user: s.userId, mode: s.mode, hidden: s.onHidden });
  history.replaceState(null, '', `${location.pathname}?${q}`);
  $('another-tab').href = `${location.pathname}?${q}`;
}

$('settings').addEventListener('submit', (e) => {
  e.preventDefault();
  updateLinks();
  streams = [];
  limit = null;
  play();
  refreshStreams();
});
$('play').addEventListener('click', () => play());
$('stop').addEventListener('click', stop);
$('take-over').addEventListener('click', () => takeOver(toEvict()));

readQuery();
requestAnimationFrame(frame);
setInterval(refreshStreams, LIST_EVERY_MS);
play();
refreshStreams();
