// Heartbeat mode against the real streamcap binary: acquire, renewals,
// refusal, take-over, release, back-off on 429 and 503, JWTs and the page
// lifecycle. Only the page (an EventTarget standing in for window and
// document) and, where a test says so, the network are stubbed.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  fakePage,
  jwtSecret,
  liveStreams,
  mintJwt,
  newUser,
  nextEvent,
  record,
  recordingFetch,
  refusedRequest,
  sleep,
  startRedis,
  startStreamcap,
  waitUntil,
  PROBLEM,
  StreamcapClient,
} from '../test-support/harness.js';


describe('heartbeat mode', () => {
  let server;
  before(async () => {
    server = await startStreamcap(['--lease-ttl', '3', '--default-limit', '2']);
  });
  after(() => server.stop());

  const client = (userId, streamId, extra = {}) =>
    new StreamcapClient({ baseUrl: server.base, userId, streamId, mode: 'heartbeat', ...extra });

  test('acquires, renews every ttl/3 and keeps the lease past its TTL', async () => {
    const user = newUser();
    const net = recordingFetch();
    const c = client(user, 'tv-1', { deviceId: 'living-room', contentId: 'movie-42', fetch: net.fetch });
    const events = record(c);
    const lease = await c.start();
    assert.equal(lease.stream_id, 'tv-1');
    assert.equal(lease.user_id, user);
    assert.equal(lease.device_id, 'living-room');
    assert.equal(lease.ttl_seconds, 3);
    assert.equal(lease.active_streams, 1);
    assert.equal(c.state, 'active');
    assert.deepEqual(c.lease, lease);
    assert.deepEqual(
      events.filter((e) => e.type === 'state').map((e) => e.detail.state),
      ['acquiring', 'active'],
    );

    // Four renewals take about 4 s: longer than the 3 s TTL.
    await waitUntil(() => events.filter((e) => e.type === 'renewed').length >= 4, 15_000, 'four renewals');
    assert.equal(events.filter((e) => e.type === 'granted').length, 1);
    assert.equal(events.filter((e) => e.type === 'error').length, 0);
    const renewed = events.filter((e) => e.type === 'renewed').at(-1).detail;
    assert.equal(renewed.started_at, lease.started_at, 'a renewal keeps started_at');
    assert.ok(Date.parse(renewed.expires_at) > Date.parse(lease.expires_at) + 2_000);
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);
    // Every renewal sends the labels again, and nothing else.
    const puts = net.calls.filter((call) => call.method === 'PUT');
    assert.ok(puts.length >= 5);
    for (const put of puts) {
      assert.deepEqual(JSON.parse(put.init.body), { device_id: 'living-room', content_id: 'movie-42' });
      assert.equal(put.init.headers['Content-Type'], 'application/json');
    }
    await c.stop();
    assert.deepEqual(await liveStreams(server.base, user), []);
  });

  test('a refusal lists the active streams; takeOver frees a seat and the evicted client is revoked', async () => {
    const user = newUser();
    const a = client(user, 'tv-1', { deviceId: 'tv' });
    const b = client(user, 'phone-1', { deviceId: 'phone' });
    assert.ok(await a.start());
    assert.ok(await b.start());

    const net = recordingFetch();
    const c = client(user, 'laptop-1', { fetch: net.fetch });
    const refused = nextEvent(c, 'refused');
    assert.equal(await c.start(), null, 'a refused start resolves with null');
    const problem = await refused;
    assert.equal(c.state, 'refused');
    assert.equal(problem.status, 409);
    assert.equal(problem.type, `${PROBLEM}stream-limit-reached`);
    assert.equal(problem.limit, 2);
    assert.deepEqual(
      problem.active_streams.map((s) => [s.stream_id, s.device_id]),
      [
        ['tv-1', 'tv'],
        ['phone-1', 'phone'],
      ],
    );
    assert.deepEqual(c.problem, problem);
    assert.equal(c.lease, null);
    assert.equal(net.calls.length, 1, 'a refusal is not retried');

    const revoked = nextEvent(a, 'revoked');
    const lease = await c.takeOver(['tv-1']);
    assert.equal(lease.stream_id, 'laptop-1');
    assert.deepEqual(lease.evicted.map((s) => s.stream_id), ['tv-1']);
    assert.equal(c.state, 'active');
    assert.deepEqual(JSON.parse(net.calls[1].init.body), { evict: ['tv-1'] });

    // The evicted client learns at its next renewal, within ttl/3 (1 s).
    const detail = await revoked;
    assert.equal(detail.reason, 'evicted_by_new_stream');
    assert.equal(detail.by_stream_id, 'laptop-1');
    assert.equal(detail.problem.status, 410);
    assert.equal(detail.problem.type, `${PROBLEM}stream-revoked`);
    assert.equal(a.state, 'revoked');
    assert.equal(a.lease, null);
    assert.deepEqual(await liveStreams(server.base, user), ['phone-1', 'laptop-1']);

    // The take-over's renewals no longer ask to evict.
    await nextEvent(c, 'renewed');
    assert.deepEqual(JSON.parse(net.calls.at(-1).init.body), {});
    await Promise.all([b.stop(), c.stop(), a.stop()]);
    assert.equal(a.state, 'stopped');
    assert.deepEqual(await liveStreams(server.base, user), []);
  });

  test('stop() releases the seat at once with one DELETE, and is idempotent', async () => {
    const user = newUser();
    const net = recordingFetch();
    const c = client(user, 'tv-1', { fetch: net.fetch });
    await c.start();
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);
    await Promise.all([c.stop(), c.stop()]);
    await c.stop();
    assert.equal(c.state, 'stopped');
    assert.equal(c.lease, null);
    assert.deepEqual(await liveStreams(server.base, user), []);
    const deletes = net.calls.filter((call) => call.method === 'DELETE');
    assert.equal(deletes.length, 1);
    assert.equal(deletes[0].status, 204);
    assert.equal(deletes[0].init.keepalive, true);
    assert.equal(deletes[0].url, `${server.base}/v1/users/${user}/streams/tv-1`);
    // No timer is left: nothing more is sent after the 1 s heartbeat pace.
    const sent = net.calls.length;
    await sleep(1_500);
    assert.equal(net.calls.length, sent);

    // A stopped client can start again.
    assert.ok(await c.start());
    assert.deepEqual(await liveStreams(server.base, user), ['tv-1']);
    await c.stop();
  });

  test('stop() during an acquire waits for its answer, then releases', async () => {
    const user = newUser();
    const net = recordingFetch();
    let stopped;
    // stop() is called while the PUT is on its way.
    const fetchThenStop = (url, init) => {
      const res = net.fetch(url, init);
      stopped ??= c.stop();
      return res;
    };
    const c = client(user, 'tv-1', { fetch: fetchThenStop });
    const started = c.start();
    assert.equal(await started, null, 'a start() pending at stop() resolves with null');
    await stopped;
    assert.equal(c.state, 'stopped');
    assert.deepEqual(net.calls.map((call) => [call.method, call.status]), [['PUT', 201], ['DELETE', 204]]);
    assert.ok(net.calls[1].at >= net.calls[0].answeredAt, 'the release waits for the acquire');
    assert.deepEqual(await liveStreams(server.base, user), []);
  });

  test('an answer that retrying cannot change (400) is not retried', async () => {
    const net = recordingFetch();
    const c = client(newUser(), 'tv-1', { plan: 'no-such-plan', fetch: net.fetch });
    const error = nextEvent(c, 'error');
    assert.equal(await c.start(), null);
    const detail = await error;
    assert.equal(c.state, 'failed');
    assert.equal(detail.status, 400);
    assert.equal(detail.phase, 'acquire');
    assert.equal(detail.retryInMs, null);
    assert.equal(detail.problem.type, `${PROBLEM}invalid-request`);
    assert.deepEqual(c.problem, detail.problem);
    await sleep(1_000);
    assert.equal(net.calls.length, 1);
    await c.stop();
    assert.equal(net.calls.length, 1, 'stop() after a failure has nothing to release');
  });

  test('a network error is retried (the network is stubbed: the first two fetches throw)', async () => {
    const user = newUser();
    const net = recordingFetch();
    let failures = 0;
    const flaky = (url, init) => {
      if (failures < 2) {
        failures += 1;
        return Promise.reject(new TypeError('fetch failed'));
      }
      return net.fetch(url, init);
    };
    const c = client(user, 'tv-1', { fetch: flaky, initialRetryDelayMs: 100 });
    const events = record(c);
    const lease = await c.start();
    assert.ok(lease);
    const errors = events.filter((e) => e.type === 'error').map((e) => e.detail);
    assert.equal(errors.length, 2);
    for (const e of errors) {
      assert.equal(e.status, null);
      assert.equal(e.problem, null);
      assert.equal(e.cause.message, 'fetch failed');
      assert.ok(e.retryInMs >= 50 && e.retryInMs <= 200, `retryInMs ${e.retryInMs}`);
    }
    await c.stop();
  });
});

describe('heartbeat mode: back-off', () => {
  test('429: waits for Retry-After before retrying', async () => {
    const server = await startStreamcap(['--user-rate-limit', '1', '--user-rate-burst', '1']);
    try {
      const user = newUser();
      // Whether a request is refused depends on how long ago the bucket's one
      // token was taken, and a busy machine can let it come back in between.
      // So the network answers the client's first PUT with a refusal the
      // server gave this user just before; the retry goes to the server.
      const net = recordingFetch({ first: await refusedRequest(server.base, user, 1) });
      const b = new StreamcapClient({ baseUrl: server.base, userId: user, streamId: 'phone-1', fetch: net.fetch });
      const events = record(b);
      const error = nextEvent(b, 'error');
      const lease = await b.start();
      const detail = await error;
      assert.equal(detail.status, 429);
      assert.equal(detail.phase, 'acquire');
      assert.equal(detail.problem.type, `${PROBLEM}rate-limited`);
      assert.equal(detail.problem.retry_after_seconds, 1);
      assert.ok(detail.retryInMs >= 1_000, `retryInMs ${detail.retryInMs} honours Retry-After: 1`);
      assert.ok(lease, 'granted once the bucket refilled');
      assert.deepEqual(net.calls.map((c) => c.status), [429, 201]);
      const gap = net.calls[1].at - net.calls[0].answeredAt;
      assert.ok(gap >= 990, `retried after ${gap} ms, before Retry-After`);
      // The release takes a token too: the one the retry took is back a
      // second after it was taken.
      await sleep(1_100);
      await b.stop();
      assert.deepEqual(
        net.calls.map((c) => [c.method, c.status]),
        [
          ['PUT', 429],
          ['PUT', 201],
          ['DELETE', 204],
        ],
      );
      assert.deepEqual(events.filter((e) => e.type === 'error').map((e) => e.detail.phase), ['acquire']);
    } finally {
      await server.stop();
    }
  });

  test('503 from a store that is down: backs off, and acquires and renews once it is back', async () => {
    const redis = await startRedis();
    let store = redis;
    const server = await startStreamcap(['--store', 'redis', '--redis-url', redis.url, '--lease-ttl', '3']);
    try {
      await redis.stop();
      const c = new StreamcapClient({ baseUrl: server.base, userId: newUser(), streamId: 'tv-1' });
      const events = record(c);
      const error = nextEvent(c, 'error');
      const started = c.start();
      const detail = await error;
      assert.equal(detail.status, 503);
      assert.equal(detail.phase, 'acquire');
      assert.equal(detail.problem.type, `${PROBLEM}store-unavailable`);
      assert.ok(detail.retryInMs >= 1_000, `retryInMs ${detail.retryInMs} honours Retry-After: 1`);
      assert.equal(c.state, 'acquiring');

      store = await startRedis(redis.port);
      const lease = await started;
      assert.ok(lease, 'granted once the store answers again');
      assert.equal(c.state, 'active');

      // A renewal that meets the store down: reconnecting, then active again.
      await store.stop();
      const renewError = await nextEvent(c, 'error');
      assert.equal(renewError.phase, 'renew');
      assert.equal(renewError.status, 503);
      assert.ok(renewError.retryInMs >= 1_000);
      assert.equal(c.state, 'reconnecting');
      assert.ok(c.lease, 'the lease may still be live: the client keeps it while it retries');
      store = await startRedis(redis.port);
      await waitUntil(() => c.state === 'active', 15_000, 'active again');
      const states = events.filter((e) => e.type === 'state').map((e) => e.detail.state);
      assert.deepEqual(states, ['acquiring', 'active', 'reconnecting', 'active']);
      await c.stop();
    } finally {
      await server.stop();
      await store.stop();
    }
  });
});

describe('heartbeat mode: JWT', () => {
  let server;
  let secret;
  before(async () => {
    const jwt = jwtSecret();
    secret = jwt.secret;
    server = await startStreamcap(['--auth-mode', 'jwt', '--jwt-secret-file', jwt.file, '--lease-ttl', '3']);
  });
  after(() => server.stop());

  test('getToken is asked before every request; /v1/me acquires for the token user', async () => {
    const user = newUser('alice');
    const net = recordingFetch();
    let asked = 0;
    const getToken = async () => {
      asked += 1;
      return mintJwt(secret, user);
    };
    const c = new StreamcapClient({ baseUrl: server.base, streamId: 'tv-1', getToken, fetch: net.fetch });
    const lease = await c.start();
    assert.equal(lease.user_id, user);
    await nextEvent(c, 'renewed');
    assert.equal(asked, 2);
    const token = mintJwt(secret, user);
    assert.deepEqual(await liveStreams(server.base, user, token), ['tv-1']);
    await c.stop();
    assert.deepEqual(await liveStreams(server.base, user, token), []);
    for (const call of net.calls) {
      assert.match(call.url, /\/v1\/me\/streams\/tv-1$/);
      assert.match(call.init.headers.Authorization, /^Bearer ey/);
    }
    assert.equal(net.calls.at(-1).method, 'DELETE');
    assert.equal(net.calls.at(-1).status, 204);
  });

  test('401 and 403 are not retried', async () => {
    const net = recordingFetch();
    const bad = new StreamcapClient({ baseUrl: server.base, streamId: 'tv-1', token: 'not-a-jwt', fetch: net.fetch });
    const error = nextEvent(bad, 'error');
    assert.equal(await bad.start(), null);
    const detail = await error;
    assert.equal(bad.state, 'failed');
    assert.equal(detail.status, 401);
    assert.equal(detail.problem.type, `${PROBLEM}unauthorized`);
    assert.equal(detail.retryInMs, null);

    const token = mintJwt(secret, newUser('alice'));
    const other = new StreamcapClient({ baseUrl: server.base, userId: 'bob', streamId: 'tv-1', token, fetch: net.fetch });
    assert.equal(await other.start(), null);
    assert.equal(other.state, 'failed');
    assert.equal(other.problem.status, 403);
    assert.equal(other.problem.type, `${PROBLEM}forbidden`);
    await sleep(1_000);
    assert.deepEqual(net.calls.map((c) => c.status), [401, 403]);
  });
});

describe('heartbeat mode: page lifecycle', () => {
  let server;
  let secret;
  before(async () => {
    const jwt = jwtSecret();
    secret = jwt.secret;
    server = await startStreamcap(['--auth-mode', 'jwt', '--jwt-secret-file', jwt.file]);
  });
  after(() => server.stop());

  test('hidden releases at once with a keepalive DELETE carrying the credential; visible acquires again', async () => {
    const user = newUser('alice');
    const token = mintJwt(secret, user);
    const net = recordingFetch();
    const { page, set } = fakePage();
    const c = new StreamcapClient({ baseUrl: server.base, streamId: 'tv-1', token, fetch: net.fetch, page });
    const first = await c.start();

    set('hidden');
    assert.equal(c.state, 'suspended', 'suspended synchronously, in the event');
    const del = net.calls.at(-1);
    assert.equal(del.method, 'DELETE', 'the DELETE is sent synchronously, in the event');
    assert.equal(del.init.keepalive, true);
    assert.equal(del.init.headers.Authorization, `Bearer ${token}`);
    await waitUntil(async () => (await liveStreams(server.base, user, token)).length === 0, 5_000, 'the release');

    const granted = nextEvent(c, 'granted');
    set('visible');
    const again = await granted;
    assert.equal(c.state, 'active');
    assert.ok(Date.parse(again.started_at) > Date.parse(first.started_at), 'a new lease');
    assert.deepEqual(await liveStreams(server.base, user, token), ['tv-1']);
    await c.stop();
  });

  test('pagehide releases, and a page restored from the back/forward cache acquires again', async () => {
    const user = newUser('alice');
    const token = mintJwt(secret, user);
    const { page, pageEvent } = fakePage();
    const c = new StreamcapClient({ baseUrl: server.base, streamId: 'tv-1', token, page, onHidden: 'keep' });
    await c.start();
    pageEvent('pagehide', true);
    assert.equal(c.state, 'suspended');
    await waitUntil(async () => (await liveStreams(server.base, user, token)).length === 0, 5_000, 'the release');
    const granted = nextEvent(c, 'granted');
    pageEvent('pageshow', true);
    await granted;
    assert.deepEqual(await liveStreams(server.base, user, token), ['tv-1']);
    await c.stop();
  });

  test("onHidden 'keep' holds the lease while hidden; stop() forgets the page", async () => {
    const user = newUser('alice');
    const token = mintJwt(secret, user);
    const net = recordingFetch();
    const { page, set, pageEvent } = fakePage();
    const c = new StreamcapClient({ baseUrl: server.base, streamId: 'tv-1', token, page, onHidden: 'keep', fetch: net.fetch });
    await c.start();
    set('hidden');
    assert.equal(c.state, 'active');
    assert.deepEqual(await liveStreams(server.base, user, token), ['tv-1']);
    set('visible');
    await c.stop();
    const sent = net.calls.length;
    pageEvent('pagehide', false);
    set('hidden');
    set('visible');
    assert.equal(c.state, 'stopped');
    assert.equal(net.calls.length, sent);
  });

  test('a start() pending while the page is hidden resolves once it is visible and granted', async () => {
    const user = newUser('alice');
    const token = mintJwt(secret, user);
    const { page, set } = fakePage();
    const c = new StreamcapClient({ baseUrl: server.base, streamId: 'tv-1', token, page });
    const started = c.start();
    set('hidden');
    assert.equal(c.state, 'suspended');
    set('visible');
    const lease = await started;
    assert.equal(lease.user_id, user);
    await c.stop();
    assert.deepEqual(await liveStreams(server.base, user, token), []);
  });
});
