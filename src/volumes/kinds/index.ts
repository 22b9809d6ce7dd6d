/**
 * The kinds table: spec.kind → its implementation (./kind.ts). A new kind is a file here and one line
 * below, plus its spec in VolumeSpec and its options in ParsedOptions (the compiler then asks for the line).
 */
import type { VolumeSpec } from '../../store/volume-store.js';
import { bind } from './bind.js';
import { clone } from './clone.js';
import type { KindName, VolumeKind } from './kind.js';
import { layered } from './layered.js';
import { named } from './named.js';
import { sized } from './sized.js';

/** Every kind, by spec.kind. */
export const KINDS: { readonly [K in KindName]: VolumeKind<K> } = { named, bind, sized, clone, layered };

/** The implementation of a spec's (or parsed options') kind. */
export function kindOf(spec: { readonly kind: KindName }): VolumeKind {
  // The one place an entry is picked, by the very spec.kind it handles, so handing it out under the
  // any-kind type is safe: callers pass it records (or options) of that spec only.
  return KINDS[spec.kind] as VolumeKind;
}

/**
 * True for volumes whose files are only visible while a mount of their own is up (VolumeKind.hasOwnMount):
 * a loop-backed sized volume's image, a layered volume's overlay. That mount exists while the volume is held.
 */
export function hasOwnMount(spec: VolumeSpec): boolean {
  return kindOf(spec).hasOwnMount(spec);
}
