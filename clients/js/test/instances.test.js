// Two streamcap instances on one real redis-server: a client holding its
// lease on instance A behaves the same whether the take-over, the
// revocation or the newer socket came through A or through B. 60 s leases
// renew every 20 s, so an event within TOLD_MS was pushed, not learnt at a
// renewal.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  deadline,
  liveStreams,
  newUser,
  record,
  startRedis,
  startStreamcap,
  waitUntil,
  StreamcapClient,
} from '../test-support/harness.js';

const TOLD_MS = 10_000;

describe('two instances on one Redis', () => {
  let redis;
  let a;
  let b;
  before(async () => {
    redis = await startRedis();
    const args = ['--store', 'redis', '--redis-url', redis.url, '--lease-ttl', '60', '--default-limit', '2'];
    a = await startStreamcap(args);
    b = await startStreamcap(args);
  });
  after(async () => {
    await a.stop();
    await b.stop();
    await redis.stop();
  });

  const on = (server, userId, streamId, mode = 'websocket') =>
    new StreamcapClient({ baseUrl: server.base, userId, streamId, mode });

  /** Waits for `client`'s revoked event and returns its detail. */
  async function revokedOf(events, what) {
    await waitUntil(() => events.some((e) => e.type === 'revoked'), TOLD_MS, what);
    return events.find((e) => e.type === 'revoked').detail;
  }

  for (const mode of ['websocket', 'heartbeat']) {
    test(`a take-over through B by a ${mode} client revokes the socket held on A at once`, async () => {
      const user = newUser();
      const tv = on(a, user, 'tv-1');
      const phone = on(a, user, 'phone-1');
      assert.ok(await deadline(tv.start(), 10_000, 'tv'));
      assert.ok(await deadline(phone.start(), 10_000, 'phone'));
      const events = record(tv);
      const laptop = on(b, user, 'laptop-1', mode);
      const lease = await deadline(laptop.takeOver(['tv-1']), 10_000, 'the take-over');
      assert.deepEqual(lease.evicted.map((s) => s.stream_id), ['tv-1']);
      const revoked = await revokedOf(events, 'the socket on A to be told');
      assert.equal(revoked.reason, 'evicted_by_new_stream');
      assert.equal(revoked.by_stream_id, 'laptop-1');
      assert.equal(tv.state, 'revoked');
      assert.deepEqual(await liveStreams(a.base, user), ['phone-1', 'laptop-1']);
      await Promise.all([phone.stop(), laptop.stop(), tv.stop()]);
      await waitUntil(async () => (await liveStreams(b.base, user)).length === 0, TOLD_MS, 'the releases');
    });
  }

  test('a revoke-all through B reaches the socket held on A', async () => {
    const user = newUser();
    const tv = on(a, user, 'tv-1');
    assert.ok(await deadline(tv.start(), 10_000, 'tv'));
    const events = record(tv);
    const res = await fetch(`${b.base}/v1/users/${user}/streams`, { method: 'DELETE' });
    assert.deepEqual(await res.json(), { revoked: ['tv-1'] });
    const revoked = await revokedOf(events, 'the socket on A to be told');
    assert.equal(revoked.reason, 'revoked');
    assert.equal(tv.state, 'revoked');
  });

  test('the same stream opened on B replaces the socket on A, whose stop leaves the seat alone', async () => {
    const user = newUser();
    const older = on(a, user, 'tv-1');
    assert.ok(await deadline(older.start(), 10_000, 'older'));
    const events = record(older);
    const newer = on(b, user, 'tv-1');
    assert.ok(await deadline(newer.start(), 10_000, 'newer'));
    const revoked = await revokedOf(events, 'the older socket to be told');
    assert.equal(revoked.reason, 'replaced');
    await older.stop();
    assert.deepEqual(await liveStreams(a.base, user), ['tv-1'], 'the newer socket keeps its seat');
    await newer.stop();
    await waitUntil(async () => (await liveStreams(a.base, user)).length === 0, TOLD_MS, 'the release');
  });
});
