/** Hand-made tar headers for the tar tests. */

/** Recomputes a header block's checksum after a test changed its bytes. */
export function resum(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of block) sum += b;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return block;
}
