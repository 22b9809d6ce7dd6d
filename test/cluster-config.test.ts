/** Cluster mode's configuration (#14): TSVOL_SCOPE, TSVOL_NODE_ID, TSVOL_LEASE_SECONDS; bad values named. */
import fs from 'node:fs';
import test from 'ava';
import { loadConfig } from '../src/config.js';

const base = { TSVOL_SOCKET: '/run/t.sock', TSVOL_DATA: '/var/lib/t' };

test('local is the default scope, with a 30 s lease', (t) => {
  const c = loadConfig(base);
  t.is(c.scope, 'local');
  t.is(c.leaseSeconds, 30);
});

test('global scope with a node ID and a lease', (t) => {
  const c = loadConfig({ ...base, TSVOL_SCOPE: 'global', TSVOL_NODE_ID: 'n1', TSVOL_LEASE_SECONDS: '8' });
  t.is(c.scope, 'global');
  t.is(c.nodeId, 'n1');
  t.is(c.leaseSeconds, 8);
  t.is(loadConfig({ ...base, TSVOL_SCOPE: 'GLOBAL', TSVOL_NODE_ID: 'node-2.eu' }).scope, 'global');
});

const refused: [Record<string, string>, RegExp][] = [
  [{ TSVOL_SCOPE: 'swarm' }, /TSVOL_SCOPE="swarm" is not a scope; use local \(one host\) or global/],
  [{ TSVOL_SCOPE: 'global' }, /TSVOL_SCOPE=global needs TSVOL_NODE_ID: a name unique to this node/],
  [{ TSVOL_SCOPE: 'global', TSVOL_NODE_ID: '../n1' }, /TSVOL_NODE_ID="\.\.\/n1" cannot name a node in cluster mode/],
  [{ TSVOL_SCOPE: 'global', TSVOL_NODE_ID: '.hidden' }, /cannot name a node in cluster mode/],
  [{ TSVOL_SCOPE: 'global', TSVOL_NODE_ID: 'n'.repeat(65) }, /cannot name a node in cluster mode/],
  [{ TSVOL_LEASE_SECONDS: '2' }, /TSVOL_LEASE_SECONDS="2" is not a lease; use whole seconds from 3 to 3600/],
  [{ TSVOL_LEASE_SECONDS: '1e3' }, /is not a lease/],
  [{ TSVOL_LEASE_SECONDS: '3601' }, /is not a lease/],
];
for (const [env, message] of refused) {
  test(`refused: ${JSON.stringify(env).slice(0, 70)}`, (t) => {
    t.throws(() => loadConfig({ ...base, ...env }), { message, code: 'TSVOL_INVALID_ARGUMENT' } as never);
  });
}

test('the managed plugin can set every cluster setting (config.json)', (t) => {
  const config = JSON.parse(fs.readFileSync(new URL('../config.json', import.meta.url), 'utf8')) as {
    env: { name: string; value: string; settable?: string[] }[];
  };
  const env = new Map(config.env.map((e) => [e.name, e]));
  for (const [name, value] of [['TSVOL_SCOPE', 'local'], ['TSVOL_NODE_ID', ''], ['TSVOL_LEASE_SECONDS', '30']] as const) {
    t.is(env.get(name)?.value, value, name);
    t.deepEqual(env.get(name)?.settable, ['value'], name);
  }
  // The defaults the plugin ships load as a local-mode config.
  const shipped = Object.fromEntries(config.env.map((e) => [e.name, e.value]));
  t.is(loadConfig(shipped).scope, 'local');
});
