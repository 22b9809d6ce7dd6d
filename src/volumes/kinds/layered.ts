/**
 * Layered volumes (`layer=ID|TAG`, #6): copy-on-write on a layer chain, src/volumes/layered.ts. The
 * volume holds its layer for as long as its record exists (a LinkedChange), so `tsvol layer rm` and `gc`
 * can never take a layer from under a volume. Only what was written (the upper directory) is its usage.
 */
import { measureTree } from '../usage.js';
import { buildInTmp, dataDirVolume, unmountData } from './common.js';
import type { VolumeKind } from './kind.js';

/** The layered kind. */
export const layered: VolumeKind<'layered'> = {
  ...dataDirVolume,
  statusKind: 'layered',
  clusterRefusal: 'layer= and image= are refused: the layer store is one host\'s SQLite database, which must not live on a shared filesystem',
  hasOwnMount: () => true,
  async plan(_name, parsed, ctx) {
    // An image (#11) is its top layer: the record keeps the ChainID, so retagging or removing the image
    // later never changes the volume (the volume's own hold keeps the layer).
    if (parsed.image !== undefined) return { kind: 'layered', layer: await ctx.layered.imageTop(parsed.image), image: parsed.image };
    // A tag or prefix names a ChainID now; the record keeps the ID, which never changes meaning. The
    // hold is taken with the record (linked), so a layer removed meanwhile fails the Create there.
    return { kind: 'layered', layer: ctx.layered.layers.resolve(parsed.layer).id };
  },
  linked: (rec, ctx) => [{ type: 'layerHold', layer: rec.spec.layer, holder: ctx.layered.holderOf(rec.name) }],
  build: (rec, ctx) => buildInTmp(rec, ctx, (files) => ctx.layered.build(files)),
  async establish(rec, ctx) {
    ctx.layered.mount(rec.name, rec.spec.layer);
  },
  // The overlay goes with the last holder.
  release: unmountData,
  // A layered volume costs what was written to it: its upper directory, not the layer's files.
  measure: (rec, ctx) => () => measureTree(ctx.layout.filesOf(rec.name).upper),
  diffOf: (rec, ctx) => ({ dir: ctx.layout.filesOf(rec.name).upper, parent: rec.spec.layer }),
  describe: (rec, ctx) => ({ path: ctx.layout.dataDir(rec.name), layer: rec.spec.layer, ...(rec.spec.image === undefined ? {} : { image: rec.spec.image }) }),
};
