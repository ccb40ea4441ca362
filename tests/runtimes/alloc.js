// ~100 MiB of Buffers: their backing stores are malloc'd outside the JS heap.
function fillBuffers(count, size) {
  const out = [];
  for (let i = 0; i < count; i++) {
    const b = Buffer.allocUnsafeSlow(size);
    b.fill(i & 0xff);
    out.push(b);
  }
  return out;
}
const kept = fillBuffers(100, 1 << 20);
console.log("buffers", kept.length);
// Exit at once, before teardown frees the stores: the report shows them.
process.exit(0);
