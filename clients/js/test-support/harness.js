// The test harness of the JS client: the real streamcap binary (from
// STREAMCAP_BIN) and real redis-server processes on free loopback ports,
// stopped by PID; plus small helpers to wait for events and to sign JWTs.
// It lives outside test/ because `node --test` runs every file under test/.

import { spawn, spawnSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'node:test';

import { StreamcapClient as Client } from '../streamcap.js';

/** The streamcap binary under test. */
export function binary() {
  const bin = process.env.STREAMCAP_BIN;
  if (!bin) {
    throw new Error(
      'STREAMCAP_BIN is not set: run these tests with `cargo test --test js_client`, ' +
        'or set STREAMCAP_BIN to a streamcap binary (e.g. target/debug/streamcap)',
    );
  }
  return bin;
}

/** The environment of a child: this one without STREAMCAP_* (only flags configure the server). */
function childEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('STREAMCAP_')) env[k] = v;
  env.RUST_LOG = 'info';
  return env;
}

/**
 * Starts `streamcap serve ARGS`, with `--listen 127.0.0.1:0` and `--store
 * memory` unless ARGS choose others, and resolves once it listens.
 */
export async function startStreamcap(args = []) {
  const listen = args.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
  const store = args.includes('--store') ? [] : ['--store', 'memory'];
  const child = spawn(binary(), ['serve', ...listen, ...store, ...args], {
    env: childEnv(),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const addr = await new Promise((resolve, reject) => {
    let pending = '';
    const timer = setTimeout(() => reject(new Error(`streamcap did not listen within 30 s:\n${log}`)), 30_000);
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      pending += chunk;
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        // eslint-disable-next-line no-control-regex
        const line = pending.slice(0, nl).replace(/\x1b\[[0-9;]*m/g, '');
        pending = pending.slice(nl + 1);
        const m = line.includes('listening') && /\baddr=(\S+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`streamcap exited (${code ?? signal}) before listening:\n${log}`));
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${binary()}: ${e.message}`));
    });
  });
  return {
    base: `http://${addr}`,
    pid: child.pid,
    log: () => log,
    /** SIGTERM, then waits for the exit (SIGKILL after 10 s). */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      process.kill(child.pid, 'SIGTERM');
      const killer = setTimeout(() => process.kill(child.pid, 'SIGKILL'), 10_000);
      const out = await exited;
      clearTimeout(killer);
      return out;
    },
  };
}

/** A TCP port free right now on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/** A real redis-server on `port` (a free one if omitted), without persistence. */
export async function startRedis(port) {
  if (spawnSync('redis-server', ['--version']).error) {
    throw new Error('redis-server is not installed; ./scripts/test installs it (apt-get install -y redis-server)');
  }
  port ??= await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'streamcap-js-redis-'));
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'],
    { cwd: dir, stdio: 'ignore' },
  );
  const exited = new Promise((resolve) => child.once('exit', resolve));
  await waitUntil(() => canConnect(port), 10_000, `redis-server on port ${port}`);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) process.kill(child.pid, 'SIGKILL');
      await exited;
    },
  };
}

/** Polls `check` (sync or async) every 50 ms until it is truthy; fails after `ms`. */
export async function waitUntil(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolves like `promise`, or fails after `ms` saying what it waited for. */
export function deadline(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The detail of the next `type` event of `client`; fails after `ms`. */
export function nextEvent(client, type, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${ms} ms (state ${client.state})`));
    }, ms);
    const off = client.on(type, (detail) => {
      clearTimeout(timer);
      off();
      resolve(detail);
    });
  });
}

/** Records every event of `client` as {type, detail, at}. */
export function record(client) {
  const events = [];
  for (const type of ['granted', 'renewed', 'refused', 'revoked', 'error', 'state']) {
    client.on(type, (detail) => events.push({ type, detail, at: Date.now() }));
  }
  return events;
}

/**
 * The global fetch, with every call recorded as {method, url, init, at,
 * status} (status null when no answer came). `first`, when given, answers
 * the first call instead of the network.
 */
export function recordingFetch({ first } = {}) {
  const calls = [];
  let standIn = first;
  const fn = async (url, init = {}) => {
    const call = { method: init.method ?? 'GET', url: String(url), init, at: Date.now(), status: null };
    calls.push(call);
    const res = standIn ?? (await fetch(url, init));
    standIn = undefined;
    call.status = res.status;
    call.answeredAt = Date.now();
    return res;
  };
  return { fetch: fn, calls };
}

/**
 * The grants of a bucket of `burst` tokens that refills one token a second,
 * counted as they come: at most one more than the burst for each second
 * since it was made, and at least the burst before a refusal. A test that
 * needs a refusal asks until one comes, so that a slow machine means more
 * grants, never a failure, while a bucket that grants too many still fails.
 */
export function oneTokenASecond(burst) {
  const since = Date.now();
  let granted = 0;
  return {
    granted() {
      granted += 1;
      const seconds = (Date.now() - since) / 1000;
      if (granted > burst + Math.floor(seconds) + 1) {
        throw new Error(`${granted} grants in ${seconds} s from a bucket of ${burst} that refills one token a second`);
      }
      // Requests that each take a second or more would never empty it: fail rather than loop.
      if (granted >= burst + 100) throw new Error(`still no refusal after ${granted} grants in ${seconds} s`);
    },
    refused() {
      if (granted < burst) throw new Error(`refused after ${granted} grants from a full bucket of ${burst}`);
    },
  };
}

/**
 * A real refusal of `userId`'s rate limit (a bucket of `burst`, refilling a
 * token a second): the user's streams are listed until the server refuses.
 * Resolves with the refusing Response, its body unread.
 */
export async function refusedRequest(base, userId, burst) {
  const bucket = oneTokenASecond(burst);
  for (;;) {
    const res = await fetch(`${base}/v1/users/${userId}/streams`);
    if (res.status !== 200) {
      bucket.refused();
      return res;
    }
    await res.arrayBuffer();
    bucket.granted();
  }
}

/** GET a user's live streams, as stream ids oldest first. */
export async function liveStreams(base, userId, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(`${base}/v1/users/${userId}/streams`, { headers });
  if (res.status !== 200) throw new Error(`list ${userId}: ${res.status} ${await res.text()}`);
  return (await res.json()).active_streams.map((s) => s.stream_id);
}

/** A new HS256 secret in a file (0600), for --jwt-secret-file. */
export function jwtSecret() {
  const dir = mkdtempSync(join(tmpdir(), 'streamcap-js-jwt-'));
  const secret = randomBytes(32).toString('hex');
  const file = join(dir, 'jwt.secret');
  writeFileSync(file, secret, { mode: 0o600 });
  return { secret, file };
}

/** Signs an HS256 JWT for `sub`, valid for an hour, with extra claims. */
export function mintJwt(secret, sub, claims = {}) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600, ...claims });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/**
 * A stand-in for a browser page: the events the client listens to.
 * `set('hidden')` changes the visibility and fires visibilitychange;
 * `pageEvent('pagehide', persisted)` fires pagehide or pageshow.
 */
export function fakePage() {
  const window = new EventTarget();
  const document = new EventTarget();
  document.visibilityState = 'visible';
  const set = (state) => {
    document.visibilityState = state;
    document.dispatchEvent(new Event('visibilitychange'));
  };
  const pageEvent = (type, persisted) => {
    const event = new Event(type);
    event.persisted = persisted;
    window.dispatchEvent(event);
  };
  return { page: { window, document }, set, pageEvent };
}

/** A user id no other test uses. */
let users = 0;
export function newUser(prefix = 'u') {
  users += 1;
  return `${prefix}-${process.pid}-${users}`;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The prefix of every problem type URI. */
export const PROBLEM = 'https://streamcap.dev/problems/';

/** The client under test; every one is stopped after its test, passed or failed, so that no retry outlives it. */
const clients = [];
export class StreamcapClient extends Client {
  constructor(options) {
    super(options);
    clients.push(this);
  }
}
afterEach(() => Promise.all(clients.splice(0).map((c) => c.stop())));
