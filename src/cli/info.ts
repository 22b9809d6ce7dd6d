/** `tsvol info`: where the state is, which layer driver and which size-limit backing are in use, and why. */
import fs from 'node:fs';
import type { Command } from 'commander';
import { loadConfig } from '../config.js';
import { probeOverlay } from '../layers/probe.js';
import { serverPaths } from '../server-paths.js';
import { probeSizeBacking } from '../volumes/size-limit.js';

/** Registers `tsvol info`. */
export function registerInfo(program: Command): void {
  program
    .command('info')
    .option('--json', 'machine-readable output')
    .description('data root, layer driver and size-limit backing in use, and why')
    .action((opts: { json?: boolean }) => {
      const config = loadConfig();
      const layersRoot = serverPaths(config).layersDir;
      fs.mkdirSync(layersRoot, { recursive: true, mode: 0o700 }); // and the data root, root-only (#9 §5)
      const probe = probeOverlay(layersRoot);
      const sizing = probeSizeBacking(config.dataRoot);
      const info = {
        dataRoot: config.dataRoot,
        layerDriver: config.layerDriver ?? (probe.ok ? 'overlay' : 'copy'),
        why: config.layerDriver
          ? `TSVOL_LAYER_DRIVER=${config.layerDriver} (overlay probe: ${probe.why})`
          : probe.ok
            ? probe.why
            : `${probe.why}; using the copy driver (full copies, same behaviour)`,
        sizeBacking: sizing.backing,
        sizeWhy: sizing.why,
      };
      process.stdout.write(
        opts.json
          ? `${JSON.stringify(info, null, 2)}\n`
          : `Data root:     ${info.dataRoot}\nLayer driver:  ${info.layerDriver}\n  ${info.why}\nSized volumes: ${info.sizeBacking === 'quota' ? 'project quota' : 'own ext4 image on a loop device'}\n  ${info.sizeWhy}\n`,
      );
    });
}
