// JavaScript frames named from node's perf map: run with --perf-basic-prof
// (node writes /tmp/perf-PID.map) and --interpreted-frames-native-stack
// (each interpreted function gets code of its own, so it is in the map).
// 160 MiB of ArrayBuffers made by one JS function.
function growArrayBuffers(n) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const b = new ArrayBuffer(4 << 20);
    new Uint8Array(b).fill(1);
    out.push(b);
  }
  return out;
}
const kept = [];
for (let round = 0; round < 10; round++) kept.push(growArrayBuffers(4));
console.log("rounds", kept.length);
// Exit at once, before teardown frees the stores: the report shows them.
process.exit(0);
