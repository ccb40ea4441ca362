// ~100 MiB of Buffers: their backing stores are malloc'd outside the JS
// heap; and a JS heap of some 20 MiB of small objects beside them.
function fillBuffers(count, size) {
  const out = [];
  for (let i = 0; i < count; i++) {
    const b = Buffer.allocUnsafeSlow(size);
    b.fill(i & 0xff);
    out.push(b);
  }
  return out;
}
function fillHeap(n) {
  const out = [];
  for (let i = 0; i < n; i++) out.push({ i, s: "x" + i, a: [i, i + 1] });
  return out;
}
const kept = fillBuffers(100, 1 << 20);
const objects = fillHeap(100000);
console.log("buffers", kept.length, "objects", objects.length);
// node's own figures, to compare with memtrace's categories: heapTotal is
// committed (a semispace may be committed and never touched);
// total_physical_size is what V8 counts as resident.
const heap = require("v8").getHeapStatistics();
console.log(
  "FIGURES " +
    JSON.stringify({ ...process.memoryUsage(), totalPhysicalSize: heap.total_physical_size }),
);
// Exit at once, before teardown frees the stores: the report shows them.
process.exit(0);
