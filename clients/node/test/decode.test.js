"use strict";
// Unit tests of the decoding (no server): `npm test` in clients/node.
const test = require("node:test");
const assert = require("node:assert");
const { decodeVectors, halfToFloat, serviceConfig } = require("../index.js");

test("float32 rows from an unaligned Buffer", () => {
  const src = Float32Array.from([0.5, 1.5, 2.5, 3.5, 4.5, 5.5]);
  const buf = Buffer.concat([Buffer.from([9]), Buffer.from(src.buffer)]).subarray(1); // offset 1
  const rows = decodeVectors(buf, "VECTOR_ENCODING_FLOAT32", 3);
  assert.deepStrictEqual(rows.map((r) => Array.from(r)), [[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]]);
  assert.throws(() => decodeVectors(buf.subarray(0, 5), "VECTOR_ENCODING_FLOAT32", 3));
});

test("float16 halves", () => {
  assert.strictEqual(halfToFloat(0x3c00), 1);
  assert.strictEqual(halfToFloat(0xc000), -2);
  assert.strictEqual(halfToFloat(0x7bff), 65504);
  assert.strictEqual(halfToFloat(0x0001), 2 ** -24);
  assert.strictEqual(halfToFloat(0x7c00), Infinity);
  const buf = Buffer.from([0x00, 0x3c, 0x00, 0xc0]);
  assert.deepStrictEqual(Array.from(decodeVectors(buf, "VECTOR_ENCODING_FLOAT16", 2)[0]), [1, -2]);
});

test("service config retries UNAVAILABLE only", () => {
  const cfg = serviceConfig({ loadBalancing: "round_robin" });
  assert.deepStrictEqual(cfg.methodConfig[0].retryPolicy.retryableStatusCodes, ["UNAVAILABLE"]);
  assert.deepStrictEqual(cfg.loadBalancingConfig, [{ round_robin: {} }]);
  assert.strictEqual(serviceConfig({ maxAttempts: 1 }).methodConfig[0].retryPolicy, undefined);
});
