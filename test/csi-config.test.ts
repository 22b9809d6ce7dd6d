/** CSI configuration (#12): TSVOL_CSI_SOCKET, CSI_ENDPOINT's spellings, TSVOL_NODE_ID; bad values named. */
import os from 'node:os';
import test from 'ava';
import { loadConfig } from '../src/config.js';

const base = { TSVOL_SOCKET: '/run/t.sock', TSVOL_DATA: '/var/lib/t' };

const accepted: [Record<string, string>, string | undefined][] = [
  [{}, undefined],
  [{ TSVOL_CSI_SOCKET: '/run/csi/csi.sock' }, '/run/csi/csi.sock'],
  [{ CSI_ENDPOINT: 'unix:///csi/csi.sock' }, '/csi/csi.sock'],
  [{ CSI_ENDPOINT: 'unix:/csi/csi.sock' }, '/csi/csi.sock'],
  [{ CSI_ENDPOINT: '/csi/csi.sock' }, '/csi/csi.sock'],
  [{ CSI_ENDPOINT: 'unix:///csi/../csi.sock' }, '/csi.sock'],
  [{ TSVOL_CSI_SOCKET: '/a.sock', CSI_ENDPOINT: 'unix:///b.sock' }, '/a.sock'],
];
for (const [env, socket] of accepted) {
  test(`CSI socket from ${JSON.stringify(env)}`, (t) => {
    t.is(loadConfig({ ...base, ...env }).csiSocket, socket);
  });
}

const refused: [Record<string, string>, RegExp][] = [
  [{ CSI_ENDPOINT: 'tcp://127.0.0.1:10000' }, /CSI_ENDPOINT="tcp:\/\/127.0.0.1:10000" is not a Unix socket; use unix:\/\/\/path\/csi.sock/],
  [{ CSI_ENDPOINT: 'unix://relative.sock' }, /not a Unix socket/],
  [{ TSVOL_CSI_SOCKET: 'csi.sock' }, /TSVOL_CSI_SOCKET="csi.sock" must be an absolute path/],
  [{ TSVOL_NODE_ID: 'has space' }, /TSVOL_NODE_ID="has space" is not a node ID/],
  [{ TSVOL_NODE_ID: 'x'.repeat(129) }, /is not a node ID; use 1 to 128 printable ASCII/],
];
for (const [env, message] of refused) {
  test(`refused: ${JSON.stringify(env).slice(0, 60)}`, (t) => {
    t.throws(() => loadConfig({ ...base, ...env }), { message, code: 'TSVOL_INVALID_ARGUMENT' } as never);
  });
}

test('TSVOL_NODE_ID defaults to the hostname', (t) => {
  t.is(loadConfig(base).nodeId, os.hostname());
  t.is(loadConfig({ ...base, TSVOL_NODE_ID: 'node-7' }).nodeId, 'node-7');
});
