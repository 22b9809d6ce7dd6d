/**
 * Import rules of src/ (README "Import graph"), checked by `npm run lint:deps` in `npm test`:
 *
 *   main.ts, server.ts ─→ state.ts ─→ {volumes, layers, store, sys}     (wiring: the only place all meet)
 *   cli/ ─→ http/control-client.ts, volumes/, layers/ (operations, types), state.ts (loaded when no server answers)
 *   http/ ─→ volumes/, layers/layer-ops.ts, images/image-ops.ts (the operations it serves)
 *   csi/ ─→ volumes/ (the CSI gRPC services, #12: a peer of http/, decoding and encoding only)
 *
 * cli/ and http/ never import store/, sys/ or layers/tar/ (#10): they reach the state through the
 * operations (volumes/volume-ops.ts, layers/layer-ops.ts) and src/state.ts. Type-only imports count too
 * (tsPreCompilationDeps): a type is as much a dependency on a module's shape as a call is.
 */
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'No import cycle, type-only ones included (madge checks runtime cycles too).',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'cli-not-below-operations',
      severity: 'error',
      comment:
        'src/cli/ is a client (#10): it reaches the state through the operations or src/state.ts, never store/, sys/ or the tar internals.',
      from: { path: '^src/cli/' },
      to: { path: '^src/(store|sys|layers/tar)/' },
    },
    {
      name: 'http-not-below-operations',
      severity: 'error',
      comment:
        'src/http/ is decode → call the operations or the service → encode (#10): never store/, sys/ or the tar internals.',
      from: { path: '^src/http/' },
      to: { path: '^src/(store|sys|layers/tar)/' },
    },
    {
      name: 'csi-not-below-operations',
      severity: 'error',
      comment:
        'src/csi/ is decode → call the volume service → encode (#12), a peer of http/: never store/, sys/, layers/ or the HTTP layer.',
      from: { path: '^src/csi/' },
      to: { path: '^src/(store|sys|layers|http|cli)/' },
    },
    {
      name: 'cli-only-the-control-client',
      severity: 'error',
      comment: "Of src/http/, the CLI uses the control API's client only; the server's side is the server's.",
      from: { path: '^src/cli/' },
      to: { path: '^src/http/', pathNot: '^src/http/control-client\\.ts$' },
    },
    {
      name: 'nothing-below-imports-cli-or-http',
      severity: 'error',
      comment:
        'Imports flow one way (README "Import graph"): volumes/, layers/, store/ and sys/ never import the CLI, the HTTP layer or the wiring.',
      from: { path: '^src/(volumes|layers|images|store|sys)/' },
      to: { path: '^src/(cli/|http/|csi/|cli\\.ts$|main\\.ts$|server\\.ts$|state\\.ts$|server-paths\\.ts$)' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    includeOnly: '^src/',
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
