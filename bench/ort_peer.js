// ONNX Runtime peer of `multihead bench` (bench/ort_peer.cpp): times one decode step of
// com.microsoft.GroupQueryAttention (the model from bench/ort_peer_model.py) in
// onnxruntime-node's CPU library and prints one JSON object on stdout.
//
// Usage: node ort_peer.js SPEC_JSON
//   SPEC_JSON = {"ort": directory holding node_modules/onnxruntime-node, "model": path,
//                "H", "Hkv", "D", "P" (cached tokens), "threads",
//                "repeats" (0 = by budget), "max_repeats", "budget_s",
//                "q", "k", "v" (raw f32, (1, 1, heads*D)), "past_k", "past_v" (raw f32,
//                (1, Hkv, P, D): BNSH), "out" (where the output goes, raw f32 (1, 1, H*D)),
//                "profile": path prefix for ORT's profile (a temporary directory)}
// Prints {"available": true, "version", "median_ms", "min_ms", "max_ms", "repeats",
// "timed", "call_median_ms", "out_path"} or {"available": false, "error"}.
//
// The cache is ORT's static one: past_key / past_value hold M = P + 1 positions and are
// bound as present_key / present_value too, so ORT appends the new token's K/V at
// position P in place and attends over the P + 1 keys without copying the past. Before
// every run (untimed) 256 MiB are written, so that the cache comes from DRAM as in the
// C++ side's cold-cache measurement.
//
// The time is ORT's own: the session's Run (model_run in ORT's profile), what a C/C++
// caller of ORT measures. onnxruntime-node's call around it also copies every output
// into a fresh ArrayBuffer, the two Hkv * M * D * 4-byte caches included, which costs
// more than the attention itself; that time is reported beside it (call_median_ms), not
// counted. Without a profile the call time is used ("timed": "node call").
'use strict';

const fs = require('fs');
const path = require('path');

function readF32(file, count) {
  const buf = fs.readFileSync(file);
  if (buf.length !== count * 4) throw new Error(`${path.basename(file)}: ${buf.length} bytes, expected ${count * 4}`);
  const out = new Float32Array(count);
  new Uint8Array(out.buffer).set(buf);
  return out;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : 0.5 * (s[m - 1] + s[m]);
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  let ort;
  try {
    ort = require(path.join(spec.ort, 'node_modules', 'onnxruntime-node'));
  } catch (e) {
    throw new Error(`cannot load onnxruntime-node from ${spec.ort} (${String(e.message).split('\n')[0]}): ` +
                    'bash scripts/install_ort.sh');
  }
  const { H, Hkv, D, P } = spec;
  const M = P + 1;

  const q = readF32(spec.q, H * D);
  const k = readF32(spec.k, Hkv * D);
  const v = readF32(spec.v, Hkv * D);
  // The static cache: positions 0..P-1 of each head from the files, position P is ORT's.
  const cacheK = new Float32Array(Hkv * M * D);
  const cacheV = new Float32Array(Hkv * M * D);
  const pastK = readF32(spec.past_k, Hkv * P * D);
  const pastV = readF32(spec.past_v, Hkv * P * D);
  for (let h = 0; h < Hkv; ++h) {
    cacheK.set(pastK.subarray(h * P * D, (h + 1) * P * D), h * M * D);
    cacheV.set(pastV.subarray(h * P * D, (h + 1) * P * D), h * M * D);
  }

  const session = await ort.InferenceSession.create(spec.model, {
    executionProviders: ['cpu'],
    intraOpNumThreads: spec.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    enableProfiling: true,
    profileFilePrefix: spec.profile,
  });
  const presentK = new ort.Tensor('float32', cacheK, [1, Hkv, M, D]);
  const presentV = new ort.Tensor('float32', cacheV, [1, Hkv, M, D]);
  const feeds = {
    query: new ort.Tensor('float32', q, [1, 1, H * D]),
    key: new ort.Tensor('float32', k, [1, 1, Hkv * D]),
    value: new ort.Tensor('float32', v, [1, 1, Hkv * D]),
    past_key: presentK,
    past_value: presentV,
    seqlens_k: new ort.Tensor('int32', Int32Array.from([P]), [1]),
    total_sequence_length: new ort.Tensor('int32', Int32Array.from([M]), []),
  };
  const output = new ort.Tensor('float32', new Float32Array(H * D), [1, 1, H * D]);
  const fetches = { output, present_key: presentK, present_value: presentV };

  const scratch = new Float32Array(64 << 20);  // 256 MiB
  let pass = 0;
  const evict = () => scratch.fill(++pass);
  let results = null;
  const run = async () => {
    evict();
    const t0 = process.hrtime.bigint();
    results = await session.run(feeds, fetches);
    return Number(process.hrtime.bigint() - t0) * 1e-6;
  };

  // Warm-up as the other sides: at least twice, up to 0.1 s (at most 10).
  const warmT0 = process.hrtime.bigint();
  let first = 0;
  for (let warm = 0; warm < 2 || (warm < 10 && Number(process.hrtime.bigint() - warmT0) < 1e8); ++warm)
    first = await run();
  // The shared buffer: ORT must have written the new token's K/V at position P.
  if (cacheK[P * D] !== k[0] || cacheV[(Hkv - 1) * M * D + P * D + D - 1] !== v[Hkv * D - 1])
    throw new Error('present_key/present_value were not written into the shared cache buffer');
  const n = spec.repeats ||
            Math.max(1, Math.min(spec.max_repeats, Math.floor(spec.budget_s / Math.max(first * 1e-3, 1e-9))));
  const callMs = [];
  for (let i = 0; i < n; ++i) callMs.push(await run());

  // ORT's Run times of the timed calls: the last n model_run events of the profile.
  let ms = callMs, timed = 'node call';
  try {
    session.endProfiling();
    const dir = path.dirname(spec.profile), prefix = path.basename(spec.profile);
    const file = fs.readdirSync(dir).find((f) => f.startsWith(prefix + '_') && f.endsWith('.json'));
    const runs = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'))
      .filter((e) => e.cat === 'Session' && e.name === 'model_run').map((e) => e.dur * 1e-3);
    if (runs.length >= n) ms = runs.slice(runs.length - n), timed = 'model_run';
  } catch (e) {
    // keep the call times
  }

  const out = results.output.data;
  if (out.length !== H * D) throw new Error(`output has ${out.length} values, expected ${H * D}`);
  fs.writeFileSync(spec.out, new Uint8Array(out.buffer, out.byteOffset, out.byteLength));
  const versions = ort.env.versions || {};
  let version = versions.common || versions.node;
  if (!version) version = require(path.join(spec.ort, 'node_modules', 'onnxruntime-node', 'package.json')).version;
  console.log(JSON.stringify({
    available: true, version, median_ms: median(ms), min_ms: Math.min(...ms), max_ms: Math.max(...ms),
    repeats: ms.length, timed, call_median_ms: median(callMs), out_path: spec.out,
  }));
}

main().catch((e) => {
  console.log(JSON.stringify({ available: false, error: String(e && e.message ? e.message : e).split('\n')[0] }));
});
