// `npm test`: runs test/ with Node's test runner (TAP output), adding
// --experimental-websocket on Node versions whose global WebSocket needs it
// (before 22). The tests need STREAMCAP_BIN, the streamcap binary to test;
// `cargo test --test js_client` sets it.

import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const major = Number(process.versions.node.split('.')[0]);
// Files by name: node 20 takes directories and node 22 globs, but both take file names.
const files = readdirSync(join(root, 'test'))
  .filter((name) => name.endsWith('.test.js'))
  .sort()
  .map((name) => join('test', name));
const args = [...(major < 22 ? ['--experimental-websocket'] : []), '--test', '--test-reporter=tap', '--test-timeout=120000', ...files];
const { status, error } = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (error) throw error;
process.exit(status ?? 1);
