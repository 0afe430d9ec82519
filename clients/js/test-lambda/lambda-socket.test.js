// The client in lambda-websocket mode, against the real streamcap-lambda
// behind the tests' API Gateway WebSocket front (tests/common/gateway.rs).
// The Rust test that starts that stack runs this file (`cargo test
// --features streamcap/dynamodb,streamcap/lambda --test lambda js_client`)
// and passes it STREAMCAP_LAMBDA_SOCKET_URL, STREAMCAP_LAMBDA_JWT_SECRET,
// STREAMCAP_LAMBDA_SOCKET_TTL (seconds) and STREAMCAP_LAMBDA_LIMIT. It
// lives outside test/ because it needs that stack, which `npm test` does
// not start.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StreamcapClient, mintJwt, newUser, nextEvent, record, sleep } from '../test-support/harness.js';

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this file through the Rust test in tests/lambda.rs`);
  return value;
}

const socketUrl = env('STREAMCAP_LAMBDA_SOCKET_URL');
const secret = env('STREAMCAP_LAMBDA_JWT_SECRET');
const ttl = Number(env('STREAMCAP_LAMBDA_SOCKET_TTL'));
const limit = Number(env('STREAMCAP_LAMBDA_LIMIT'));

/** A player of `user` on the Lambda WebSocket API, with the user's own token (the `me` form: no userId). */
function player(user, streamId, extra = {}) {
  return new StreamcapClient({
    mode: 'lambda-websocket',
    socketUrl,
    streamId,
    token: mintJwt(secret, user),
    deviceId: `${streamId}-device`,
    page: false,
    initialRetryDelayMs: 200,
    ...extra,
  });
}

test('the lease is granted at start and renewed over the socket past its TTL', async () => {
  const user = newUser('lw');
  const tv = player(user, 'tv');
  const events = record(tv);
  const lease = await tv.start();
  assert.ok(lease, `state ${tv.state}, problem ${JSON.stringify(tv.problem)}`);
  assert.equal(lease.stream_id, 'tv');
  assert.equal(lease.user_id, user);
  assert.equal(lease.ttl_seconds, ttl);
  await sleep(ttl * 1000 + 1500);
  const renewed = events.filter((e) => e.type === 'renewed');
  assert.ok(renewed.length >= 3, `${renewed.length} renewals in ${ttl + 1.5} s`);
  assert.equal(tv.state, 'active');
  assert.ok(Date.parse(tv.lease.expires_at) > Date.now(), tv.lease.expires_at);
  assert.deepEqual(events.filter((e) => ['error', 'revoked', 'refused'].includes(e.type)), []);
});

test('a full account refuses, and a take-over from another socket is pushed to the evicted one at once', async () => {
  const user = newUser('lw');
  const players = [];
  for (let i = 0; i < limit; i += 1) {
    const p = player(user, `s${i}`);
    assert.ok(await p.start(), `s${i}: ${JSON.stringify(p.problem)}`);
    players.push(p);
  }
  const laptop = player(user, 'laptop');
  assert.equal(await laptop.start(), null);
  assert.equal(laptop.state, 'refused');
  assert.equal(laptop.problem.status, 409);
  assert.deepEqual(laptop.problem.active_streams.map((s) => s.stream_id), players.map((_, i) => `s${i}`));

  const evicted = nextEvent(players[0], 'revoked', 5_000);
  const granted = await laptop.takeOver(['s0']);
  assert.ok(granted, JSON.stringify(laptop.problem));
  assert.deepEqual(granted.evicted.map((s) => s.stream_id), ['s0']);
  const detail = await evicted;
  assert.equal(detail.reason, 'evicted_by_new_stream');
  assert.equal(detail.by_stream_id, 'laptop');
  assert.equal(players[0].state, 'revoked');
  assert.equal(players[1].state, 'active');
});

test('stop closes the socket, which frees the seat', async () => {
  const user = newUser('lw');
  const players = [];
  for (let i = 0; i < limit; i += 1) {
    const p = player(user, `s${i}`);
    assert.ok(await p.start());
    players.push(p);
  }
  await players[0].stop();
  assert.equal(players[0].state, 'stopped');
  // The release comes with the $disconnect that follows the close; the next start may overtake it.
  const next = player(user, 'next', { initialRetryDelayMs: 200 });
  let lease = await next.start();
  for (let i = 0; !lease && i < 20; i += 1) {
    await sleep(100);
    lease = await next.start();
  }
  assert.ok(lease, JSON.stringify(next.problem));
});

test('a new connection takes the lease over before the connection limit, without losing the seat', async () => {
  const user = newUser('lw');
  let sockets = 0;
  const Counted = class extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets += 1;
    }
  };
  const tv = player(user, 'tv', { maxConnectionMs: 1_000, WebSocket: Counted });
  const events = record(tv);
  const lease = await tv.start();
  assert.ok(lease);
  await sleep(3_500);
  assert.ok(sockets >= 3, `${sockets} connections in 3.5 s`);
  assert.equal(tv.state, 'active');
  assert.deepEqual(events.filter((e) => ['error', 'revoked', 'refused'].includes(e.type)), []);
  // The same lease throughout: it kept its start.
  assert.equal(tv.lease.started_at, lease.started_at);
  // One seat, not one per connection: the account has room for limit - 1 more.
  const others = [];
  for (let i = 1; i < limit; i += 1) {
    const p = player(user, `s${i}`);
    assert.ok(await p.start(), JSON.stringify(p.problem));
    others.push(p);
  }
  const extra = player(user, 'extra');
  assert.equal(await extra.start(), null);
  assert.equal(extra.problem.status, 409);
});

test('a bad token refuses the upgrade, which the client sees as a failed connection and retries', async () => {
  const p = new StreamcapClient({ mode: 'lambda-websocket', socketUrl, streamId: 'tv', token: 'not-a-jwt', page: false });
  const error = nextEvent(p, 'error', 5_000);
  const started = p.start();
  const detail = await error;
  assert.equal(detail.phase, 'acquire');
  assert.equal(detail.status, null);
  assert.ok(detail.retryInMs > 0, JSON.stringify(detail));
  await p.stop();
  assert.equal(await started, null);
});
