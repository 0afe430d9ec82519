// WebSocket mode against the real streamcap binary: granted, renewed,
// refused (4409), revoked at once by a take-over, released at stop(),
// credentials as a subprotocol, back-off on 4429, and a reconnect after the
// server shut down (1001). A subclass of the global WebSocket records what
// the client opened; nothing is stubbed but the first socket of the 4429
// test, which replays a refusal the server really sent.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  deadline,
  fakePage,
  freePort,
  jwtSecret,
  liveStreams,
  mintJwt,
  newUser,
  nextEvent,
  oneTokenASecond,
  record,
  sleep,
  startRedis,
  startStreamcap,
  waitUntil,
  PROBLEM,
  StreamcapClient,
} from '../test-support/harness.js';


if (typeof globalThis.WebSocket !== 'function') {
  throw new Error('no global WebSocket: run node 20 with --experimental-websocket (cargo test --test js_client does)');
}

/**
 * The global WebSocket, remembering every socket opened through it. With
 * `replay`, the first socket opens no connection: it delivers that refusal
 * (from `refusedSocket`) as the refused socket received it.
 */
function spyWebSocket({ replay } = {}) {
  const opened = [];
  class Spy extends globalThis.WebSocket {
    constructor(url, protocols) {
      if (replay && opened.length === 0) {
        const socket = replayed(replay);
        opened.push({ url, protocols, socket });
        return socket;
      }
      super(url, protocols);
      opened.push({ url, protocols, socket: this });
    }
  }
  return { WebSocket: Spy, opened };
}

/** A socket that opens, delivers the refusal's message, and closes with its code. */
function replayed({ data, code, reason }) {
  const socket = { readyState: WebSocket.CONNECTING, onopen: null, onmessage: null, onclose: null, onerror: null };
  socket.close = () => {};
  setTimeout(() => {
    socket.readyState = WebSocket.OPEN;
    socket.onopen?.({ type: 'open' });
    socket.onmessage?.({ type: 'message', data });
    socket.readyState = WebSocket.CLOSED;
    socket.onclose?.({ type: 'close', code, reason, wasClean: true });
  }, 0);
  return socket;
}

/**
 * A real refusal of a socket for `userId`'s `streamId` by the user's rate
 * limit (a bucket of `burst`, refilling a token a second): sockets connect
 * until one is refused; those granted are closed again, which releases
 * their lease and takes no token. Resolves with what the refused socket
 * received: its message's data and its close's code and reason.
 */
async function refusedSocket(base, userId, streamId, burst) {
  const url = `${base.replace('http://', 'ws://')}/v1/users/${userId}/streams/${streamId}/socket`;
  const bucket = oneTokenASecond(burst);
  for (;;) {
    const got = await new Promise((resolve, reject) => {
      const ws = new WebSocket(url, ['streamcap.v1']);
      let data = null;
      ws.onmessage = (event) => {
        data ??= event.data;
        if (JSON.parse(event.data).type === 'granted') ws.close(1000, 'done');
      };
      ws.onclose = (event) => resolve({ data, code: event.code, reason: event.reason });
      ws.onerror = () => reject(new Error(`the socket to ${url} failed`));
    });
    if (JSON.parse(got.data).type !== 'granted') {
      bucket.refused();
      return got;
    }
    bucket.granted();
  }
}

describe('websocket mode', () => {
  let server;
  before(async () => {
    server = await startStreamcap(['--lease-ttl', '3', '--default-limit', '2']);
  });
  after(() => server.stop());

  const client = (userId, streamId, extra = {}) =>
    new StreamcapClient({ baseUrl: server.base, userId, streamId, mode: 'websocket', ...extra });

  test('granted as the first message, renewed every ttl/3 past the TTL, released at stop()', async () => {
    const user = newUser();
    const spy = spyWebSocket();
    const c = client(user, 'tv-1', { deviceId: 'living-room', contentId: 'movie-42', WebSocket: spy.WebSocket });
    const events = record(c);
    const lease = await deadline(c.start(), 10_000, 'the grant');
    assert.equal(lease.user_id, user);
    assert.equal(lease.stream_id, 'tv-1');
    assert.equal(lease.device_id, 'living-room');
    assert.equal(lease.content_id, 'movie-42');
    assert.equal(lease.ttl_seconds, 3);
    assert.equal(lease.active_streams, 1);
    assert.equal(lease.limit, 2);
    assert.equal(lease.enforced, true);
    assert.equal(lease.type, undefined, 'the message type is not part of the lease');
    assert.equal(c.state, 'active');

    assert.equal(spy.opened.length, 1);
    const url = new URL(spy.opened[0].url);
    assert.equal(url.protocol, 'ws:');
    assert.equal(url.pathname, `/v1/users/${user}/streams/tv-1/socket`);
    assert.equal(url.searchParams.get('device_id'), 'living-room');
    assert.equal(url.searchParams.get('content_id'), 'movie-42');
    assert.deepEqual(spy.opened[0].protocols, ['streamcap.v1']);
    assert.equal(spy.opened[0].socket.protocol, 'streamcap.v1');

    await waitUntil(() => events.filter((e) => e.type === 'renewed').length >= 4, 15_000, 'four renewals');
    const renewed = c.lease;
    assert.equal(renewed.started_at, lease.started_at);
    assert.ok(Date.parse(renewed.expires_at) > Date.parse(lease.expires_at) + 2_000);
    assert.equal(events.filter((e) => e.type === 'granted').length, 1);
    assert.equal(events.filter((e) => e.type === 'error').length, 0);
    assert.equal(spy.opened.length, 1, 'one socket held the lease all along');
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);

    await c.stop();
    assert.equal(c.state, 'stopped');
    assert.equal(spy.opened[0].socket.readyState, WebSocket.CLOSED);
    // Released at once, not at expiry: well within the 3 s TTL.
    await waitUntil(async () => (await liveStreams(server.base, user)).length === 0, 1_500, 'the release');
  });
});

describe('websocket mode: take-overs', () => {
  let server;
  before(async () => {
    server = await startStreamcap(['--lease-ttl', '60', '--default-limit', '2']);
  });
  after(() => server.stop());

  const client = (userId, streamId, extra = {}) =>
    new StreamcapClient({ baseUrl: server.base, userId, streamId, mode: 'websocket', ...extra });

  // A socket renews every ttl/3, 20 s here, and a renewal would also tell it
  // of an eviction. Told in less than half that, it was told at once.
  const TOLD_MS = 10_000;

  test('refused (4409) lists the active streams; a take-over revokes the oldest socket at once', async () => {
    const user = newUser();
    const a = client(user, 'tv-1', { deviceId: 'tv' });
    const b = client(user, 'phone-1', { deviceId: 'phone' });
    assert.ok(await deadline(a.start(), 10_000, 'a'));
    assert.ok(await deadline(b.start(), 10_000, 'b'));

    const spy = spyWebSocket();
    const c = client(user, 'laptop-1', { WebSocket: spy.WebSocket });
    const refused = nextEvent(c, 'refused');
    assert.equal(await deadline(c.start(), 10_000, 'the refusal'), null);
    const problem = await refused;
    assert.equal(c.state, 'refused');
    assert.equal(problem.status, 409);
    assert.equal(problem.type, `${PROBLEM}stream-limit-reached`);
    assert.equal(problem.problem_type, undefined, 'shaped as the PUT answers it');
    assert.equal(problem.title, 'Stream limit reached');
    assert.equal(problem.limit, 2);
    assert.deepEqual(
      problem.active_streams.map((s) => [s.stream_id, s.device_id]),
      [
        ['tv-1', 'tv'],
        ['phone-1', 'phone'],
      ],
    );
    assert.deepEqual(c.problem, problem);
    await sleep(500);
    assert.equal(spy.opened.length, 1, 'a refusal is not retried');

    const aEvents = record(a);
    const cEvents = record(c);
    const lease = await deadline(c.takeOver(['tv-1']), 10_000, 'the take-over');
    assert.equal(lease.stream_id, 'laptop-1');
    assert.deepEqual(lease.evicted.map((s) => s.stream_id), ['tv-1']);
    assert.equal(new URL(spy.opened[1].url).searchParams.get('evict'), 'tv-1');

    await waitUntil(() => aEvents.some((e) => e.type === 'revoked'), TOLD_MS, 'the evicted socket to be told');
    const revoked = aEvents.find((e) => e.type === 'revoked').detail;
    assert.equal(revoked.reason, 'evicted_by_new_stream');
    assert.equal(revoked.by_stream_id, 'laptop-1');
    assert.equal(a.state, 'revoked');
    const grantedAt = cEvents.find((e) => e.type === 'granted').at;
    const revokedAt = aEvents.find((e) => e.type === 'revoked').at;
    assert.ok(revokedAt - grantedAt < TOLD_MS, `told ${revokedAt - grantedAt} ms after the take-over`);
    assert.deepEqual(await liveStreams(server.base, user), ['phone-1', 'laptop-1']);
    await Promise.all([a.stop(), b.stop(), c.stop()]);
    // Released at once, not at expiry (60 s).
    await waitUntil(async () => (await liveStreams(server.base, user)).length === 0, TOLD_MS, 'the releases');
  });

  test('a heartbeat take-over revokes a socket-held lease at once', async () => {
    const user = newUser();
    const a = client(user, 'tv-1');
    const b = client(user, 'phone-1');
    await deadline(Promise.all([a.start(), b.start()]), 10_000, 'two grants');
    const aEvents = record(a);
    // Subscribed before the take-over: the server tells the socket before it answers the PUT.
    const revoked = nextEvent(b, 'revoked', TOLD_MS);
    const h = new StreamcapClient({ baseUrl: server.base, userId: user, streamId: 'laptop-1' });
    const askedAt = Date.now();
    const lease = await h.takeOver(['phone-1']);
    assert.deepEqual(lease.evicted.map((s) => s.stream_id), ['phone-1']);
    const detail = await revoked;
    const latency = Date.now() - askedAt;
    assert.equal(detail.reason, 'evicted_by_new_stream');
    assert.equal(detail.by_stream_id, 'laptop-1');
    assert.ok(latency < TOLD_MS, `told ${latency} ms after the take-over was sent`);
    assert.equal(b.state, 'revoked');
    assert.equal(a.state, 'active');
    assert.deepEqual(aEvents.filter((e) => e.type === 'revoked'), []);
    await Promise.all([a.stop(), b.stop(), h.stop()]);
  });
});

describe('websocket mode: revocations', () => {
  let server;
  before(async () => {
    server = await startStreamcap([]);
  });
  after(() => server.stop());

  test('a revoke-all closes every socket of the user with revoked', async () => {
    const user = newUser();
    const a = new StreamcapClient({ baseUrl: server.base, userId: user, streamId: 'tv-1', mode: 'websocket' });
    await deadline(a.start(), 10_000, 'the grant');
    const revoked = nextEvent(a, 'revoked', 5_000);
    const res = await fetch(`${server.base}/v1/users/${user}/streams`, { method: 'DELETE' });
    assert.equal(res.status, 200);
    const detail = await revoked;
    assert.equal(detail.reason, 'revoked');
    assert.equal(detail.by_stream_id, undefined);
    assert.equal(detail.problem.status, 410);
    assert.equal(detail.problem.type, `${PROBLEM}stream-revoked`);
    assert.equal(a.state, 'revoked');
  });

  test('a second socket for the same stream replaces the first', async () => {
    const user = newUser();
    const first = new StreamcapClient({ baseUrl: server.base, userId: user, streamId: 'tv-1', mode: 'websocket' });
    const lease = await deadline(first.start(), 10_000, 'the grant');
    const revoked = nextEvent(first, 'revoked', 5_000);
    const second = new StreamcapClient({ baseUrl: server.base, userId: user, streamId: 'tv-1', mode: 'websocket' });
    const again = await deadline(second.start(), 10_000, 'the second grant');
    assert.equal(again.started_at, lease.started_at, 'the second socket renewed the lease');
    const detail = await revoked;
    assert.equal(detail.reason, 'replaced');
    assert.equal(first.state, 'revoked');
    assert.equal(second.state, 'active');
    await first.stop();
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1'], 'the replaced client releases nothing');
  });
});

describe('websocket mode: a long TTL', () => {
  let server;
  before(async () => {
    server = await startStreamcap(['--lease-ttl', '60']);
  });
  after(() => server.stop());

  test('stop() releases at once, not at expiry, and is idempotent', async () => {
    const user = newUser();
    const c = new StreamcapClient({ baseUrl: server.base, userId: user, streamId: 'tv-1', mode: 'websocket' });
    await deadline(c.start(), 10_000, 'the grant');
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);
    await Promise.all([c.stop(), c.stop()]);
    await waitUntil(async () => (await liveStreams(server.base, user)).length === 0, 2_000, 'the release');
    assert.equal(c.state, 'stopped');

    // A stopped client can start again: a new socket, a new lease.
    assert.ok(await deadline(c.start(), 10_000, 'the second grant'));
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);
    await c.stop();
  });

  test('a hidden page closes its socket, which releases at once; visible again acquires again', async () => {
    const user = newUser();
    const { page, set } = fakePage();
    const spy = spyWebSocket();
    const c = new StreamcapClient({
      baseUrl: server.base,
      userId: user,
      streamId: 'tv-1',
      mode: 'websocket',
      page,
      WebSocket: spy.WebSocket,
    });
    const first = await deadline(c.start(), 10_000, 'the grant');
    set('hidden');
    assert.equal(c.state, 'suspended');
    assert.equal(spy.opened[0].socket.readyState, WebSocket.CLOSING, 'closed in the event itself');
    await waitUntil(async () => (await liveStreams(server.base, user)).length === 0, 2_000, 'the release');
    const granted = nextEvent(c, 'granted');
    set('visible');
    const again = await granted;
    assert.ok(Date.parse(again.started_at) > Date.parse(first.started_at), 'a new lease');
    assert.equal(spy.opened.length, 2);
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);
  });

  test('the server shutting down (1001) makes the client reconnect, to a new server on the same address', async () => {
    const port = await freePort();
    const listen = ['--listen', `127.0.0.1:${port}`];
    let s = await startStreamcap(listen);
    const user = newUser();
    const c = new StreamcapClient({
      baseUrl: s.base,
      userId: user,
      streamId: 'tv-1',
      mode: 'websocket',
      initialRetryDelayMs: 200,
      maxRetryDelayMs: 1_000,
    });
    try {
      await deadline(c.start(), 10_000, 'the grant');
      const error = nextEvent(c, 'error');
      await s.stop();
      const detail = await error;
      assert.equal(detail.phase, 'renew');
      assert.match(String(detail.cause?.message), /1001/);
      assert.ok(detail.retryInMs > 0);
      assert.equal(c.state, 'reconnecting');
      assert.equal(c.lease, null, 'the server released the lease as it shut down');

      s = await startStreamcap(listen);
      const renewed = await nextEvent(c, 'renewed', 15_000);
      assert.equal(renewed.stream_id, 'tv-1');
      assert.equal(c.state, 'active');
      assert.deepEqual(await liveStreams(s.base, user), ['tv-1']);
    } finally {
      await c.stop();
      await s.stop();
    }
  });
});

describe('websocket mode: a store that is down', () => {
  test('4503: backs off for retry_after_seconds, and connects once the store is back', async (t) => {
    const redis = await startRedis();
    let store = redis;
    const server = await startStreamcap(['--store', 'redis', '--redis-url', redis.url]);
    t.after(async () => {
      await server.stop();
      await store.stop();
    });
    await redis.stop();
    const c = new StreamcapClient({ baseUrl: server.base, userId: newUser(), streamId: 'tv-1', mode: 'websocket' });
    const error = nextEvent(c, 'error');
    const started = c.start();
    const detail = await error;
    assert.equal(detail.status, 503);
    assert.equal(detail.phase, 'acquire');
    assert.equal(detail.problem.type, `${PROBLEM}store-unavailable`);
    assert.equal(detail.problem.retry_after_seconds, 1);
    assert.ok(detail.retryInMs >= 1_000, `retryInMs ${detail.retryInMs} honours retry_after_seconds`);
    assert.equal(c.state, 'acquiring');
    store = await startRedis(redis.port);
    assert.ok(await deadline(started, 15_000, 'the grant once the store is back'));
    assert.equal(c.state, 'active');
  });
});

describe('websocket mode: JWT', () => {
  let server;
  let secret;
  before(async () => {
    const jwt = jwtSecret();
    secret = jwt.secret;
    server = await startStreamcap(['--auth-mode', 'jwt', '--jwt-secret-file', jwt.file]);
  });
  after(() => server.stop());

  test('the token travels as a subprotocol, never in the URL; /v1/me acquires for the token user', async () => {
    const user = newUser('alice');
    const token = mintJwt(secret, user);
    const spy = spyWebSocket();
    const c = new StreamcapClient({
      baseUrl: server.base,
      streamId: 'tv-1',
      mode: 'websocket',
      getToken: async () => token,
      WebSocket: spy.WebSocket,
    });
    const lease = await deadline(c.start(), 10_000, 'the grant');
    assert.equal(lease.user_id, user);
    const { url, protocols, socket } = spy.opened[0];
    assert.equal(new URL(url).pathname, '/v1/me/streams/tv-1/socket');
    assert.ok(!url.includes(token));
    assert.deepEqual(protocols, ['streamcap.v1', `streamcap.bearer.${token}`]);
    assert.equal(socket.protocol, 'streamcap.v1', 'the server answers streamcap.v1, never the token');
    assert.deepEqual(await liveStreams(server.base, user, token), ['tv-1']);
    await c.stop();
    await waitUntil(async () => (await liveStreams(server.base, user, token)).length === 0, 2_000, 'the release');
  });

  test('a bad token is refused (4401) and not retried', async () => {
    const spy = spyWebSocket();
    const c = new StreamcapClient({
      baseUrl: server.base,
      streamId: 'tv-1',
      mode: 'websocket',
      token: 'not-a-jwt',
      WebSocket: spy.WebSocket,
    });
    const error = nextEvent(c, 'error');
    assert.equal(await deadline(c.start(), 10_000, 'the refusal'), null);
    const detail = await error;
    assert.equal(c.state, 'failed');
    assert.equal(detail.status, 401);
    assert.equal(detail.problem.status, 401);
    assert.equal(detail.retryInMs, null);
    await sleep(1_000);
    assert.equal(spy.opened.length, 1);
  });

});

describe('websocket mode: rate limits', () => {
  test('rate limited (4429): waits for retry_after_seconds, then connects', async (t) => {
    const server = await startStreamcap(['--user-rate-limit', '1', '--user-rate-burst', '1']);
    t.after(() => server.stop());
    const user = newUser();
    // Whether a socket is refused depends on how long ago the bucket's one
    // token was taken, and a busy machine can let it come back in between.
    // So the client's first socket replays a refusal the server gave this
    // user's stream just before; the reconnect goes to the server.
    const spy = spyWebSocket({ replay: await refusedSocket(server.base, user, 'phone-1', 1) });
    const c = new StreamcapClient({
      baseUrl: server.base,
      userId: user,
      streamId: 'phone-1',
      mode: 'websocket',
      WebSocket: spy.WebSocket,
    });
    const error = nextEvent(c, 'error');
    const started = c.start();
    const detail = await error;
    assert.equal(detail.status, 429);
    assert.equal(detail.phase, 'acquire');
    assert.equal(detail.problem.type, `${PROBLEM}rate-limited`);
    assert.equal(detail.problem.retry_after_seconds, 1);
    assert.ok(detail.retryInMs >= 1_000, `retryInMs ${detail.retryInMs} honours retry_after_seconds`);
    assert.ok(await deadline(started, 10_000, 'the grant after the back-off'));
    assert.equal(spy.opened.length, 2, 'the replayed refusal, then one real socket');
    // Closing the socket releases the lease; it takes no token.
    await c.stop();
    assert.equal(spy.opened[1].socket.readyState, WebSocket.CLOSED);
  });
});
