#!/usr/bin/env node
/**
 * The `tsvol` command line. Thin: each area registers its commands from src/cli/; they parse, call
 * volumes/ or layers/, and print.
 */
import { Command } from 'commander';
import { registerContainer } from './cli/container.js';
import { registerImage } from './cli/image.js';
import { registerInfo } from './cli/info.js';
import { registerLayer } from './cli/layer.js';
import { registerServe } from './cli/serve.js';
import { registerVolume } from './cli/volume.js';
import { registerDf } from './cli/df.js';
import { runCli } from './cli/run.js';

const program = new Command()
  .name('tsvol')
  .description('Docker volume plugin and overlay layer manager')
  .showHelpAfterError();

registerServe(program);
registerLayer(program);
registerImage(program);
registerContainer(program);
registerInfo(program);
registerVolume(program);
registerDf(program);

await runCli(program, process.argv);
