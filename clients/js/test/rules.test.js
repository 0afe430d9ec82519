// deviceClass and contentKind against the real streamcap binary, configured
// with a rule ("at most 1 TV"): sent in every heartbeat's body and in the
// socket's query, shown on the lease, and the refusal names the rule.

import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  deadline,
  liveStreams,
  newUser,
  nextEvent,
  recordingFetch,
  startStreamcap,
  PROBLEM,
  StreamcapClient,
} from '../test-support/harness.js';

if (typeof globalThis.WebSocket !== 'function') {
  throw new Error('no global WebSocket: run node 20 with --experimental-websocket (cargo test --test js_client does)');
}

const CONFIG = `[limits]
default = 3

[[limits.rules]]
name = "tv"
device_class = "tv"
limit = 1
`;

describe('device class and content kind', () => {
  let server;
  before(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'streamcap-rules-'));
    const config = join(dir, 'streamcap.toml');
    writeFileSync(config, CONFIG);
    server = await startStreamcap(['--lease-ttl', '3', '--config', config]);
  });
  after(() => server.stop());

  const client = (mode, userId, streamId, extra = {}) =>
    new StreamcapClient({ baseUrl: server.base, userId, streamId, mode, ...extra });

  test('heartbeat: every PUT carries them, the lease shows them, and a refusal names the rule', async () => {
    const user = newUser();
    const net = recordingFetch();
    const tv = client('heartbeat', user, 'tv-1', { deviceClass: 'tv', contentKind: 'vod', fetch: net.fetch });
    const lease = await tv.start();
    assert.equal(lease.device_class, 'tv');
    assert.equal(lease.content_kind, 'vod');
    await deadline(nextEvent(tv, 'renewed', 5_000), 5_000, 'a renewal');
    const puts = net.calls.filter((call) => call.method === 'PUT');
    assert.ok(puts.length >= 2);
    for (const put of puts) assert.deepEqual(JSON.parse(put.init.body), { device_class: 'tv', content_kind: 'vod' });

    const second = client('heartbeat', user, 'tv-2', { deviceClass: 'tv' });
    const refused = nextEvent(second, 'refused');
    assert.equal(await second.start(), null);
    const problem = await refused;
    assert.equal(problem.type, `${PROBLEM}stream-limit-reached`);
    assert.equal(problem.rule, 'tv');
    assert.equal(problem.rule_limit, 1);
    assert.equal(problem.limit, 3);
    assert.deepEqual(problem.active_streams.map((s) => [s.stream_id, s.device_class]), [['tv-1', 'tv']]);

    // Another device class is judged by the total only.
    const phone = client('heartbeat', user, 'phone-1', { deviceClass: 'phone' });
    assert.equal((await phone.start()).device_class, 'phone');
    await Promise.all([tv.stop(), phone.stop()]);
    assert.deepEqual(await liveStreams(server.base, user), []);
  });

  test('websocket: they are query parameters, and `refused` names the rule', async () => {
    const user = newUser();
    const opened = [];
    class Spy extends globalThis.WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        opened.push(url);
      }
    }
    const tv = client('websocket', user, 'tv-1', { deviceClass: 'tv', contentKind: 'live', WebSocket: Spy });
    const lease = await deadline(tv.start(), 10_000, 'the grant');
    assert.equal(lease.device_class, 'tv');
    assert.equal(lease.content_kind, 'live');
    const params = new URL(opened[0]).searchParams;
    assert.equal(params.get('device_class'), 'tv');
    assert.equal(params.get('content_kind'), 'live');

    const second = client('websocket', user, 'tv-2', { deviceClass: 'tv' });
    const refused = nextEvent(second, 'refused');
    assert.equal(await deadline(second.start(), 10_000, 'the refusal'), null);
    const problem = await refused;
    assert.equal(problem.status, 409);
    assert.equal(problem.rule, 'tv');
    assert.equal(problem.rule_limit, 1);
    assert.deepEqual(problem.active_streams.map((s) => s.stream_id), ['tv-1']);
    await tv.stop();
  });

  test('a device class or content kind outside the id alphabet is a TypeError', () => {
    assert.throws(() => client('heartbeat', 'u', 's', { deviceClass: 'smart tv' }), TypeError);
    assert.throws(() => client('heartbeat', 'u', 's', { contentKind: '' }), TypeError);
    assert.throws(() => client('heartbeat', 'u', 's', { contentKind: 'x'.repeat(129) }), TypeError);
  });
});
