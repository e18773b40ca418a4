// Node client of Persona's persona.v1.UserEmbeddingService (docs/api.md).
//
// The stubs are made at load time from proto/persona/v1/service.proto by
// @grpc/proto-loader; retries on UNAVAILABLE and load balancing are the gRPC service config
// (the same policy as the Python and Go clients); the default deadline goes with each call.
//
//   const { PersonaClient } = require("./clients/node");
//   const client = new PersonaClient("127.0.0.1:50051", { timeoutMs: 50 });
//   const emb = await client.getEmbeddings(["u1", "u2"]);
//   emb.vectors[0]   // Float32Array(dim), the first id's vector
//   const near = await client.findLookalikes({ userId: "u1", k: 10 });
"use strict";

const os = require("node:os");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const SERVICE = "persona.v1.UserEmbeddingService";
// The .proto files: the repository's proto/ unless PERSONA_PROTO_DIR says otherwise.
const PROTO_DIR = process.env.PERSONA_PROTO_DIR || path.join(__dirname, "..", "..", "proto");

const definition = protoLoader.loadSync("persona/v1/service.proto", {
  includeDirs: [PROTO_DIR],
  keepCase: true, // field names as in the .proto (user_ids, computed_at_ms)
  longs: Number, // int64: ms timestamps and window versions stay below 2^53
  enums: String, // "EMBEDDING_STATUS_FOUND"
  defaults: true, // unset fields read as their zero value
  oneofs: true,
});
const persona = grpc.loadPackageDefinition(definition).persona.v1;

/** The gRPC service config: retries on UNAVAILABLE, load balancing. */
function serviceConfig({ maxAttempts = 3, loadBalancing = "pick_first" } = {}) {
  const method = { name: [{ service: SERVICE }] };
  if (maxAttempts > 1) {
    method.retryPolicy = {
      maxAttempts,
      initialBackoff: "0.05s",
      maxBackoff: "0.5s",
      backoffMultiplier: 2,
      retryableStatusCodes: ["UNAVAILABLE"],
    };
  }
  return {
    loadBalancingConfig: [{ [loadBalancing]: {} }],
    methodConfig: [method],
    retryThrottling: { maxTokens: 10, tokenRatio: 0.1 },
  };
}

/** IEEE 754 binary16 -> number. */
function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Packed little-endian components -> rows of `dim` (Float32Array views of one copy).
 * A protobuf bytes field arrives as a Buffer that may start at any offset of the message,
 * and a Float32Array needs a 4-byte aligned start: copy once, then view.
 */
function decodeVectors(buf, encoding, dim) {
  const width = encoding === "VECTOR_ENCODING_FLOAT16" ? 2 : 4;
  if (encoding !== "VECTOR_ENCODING_FLOAT32" && width === 4) {
    throw new Error(`unknown vector encoding ${encoding}`);
  }
  if (dim <= 0 || buf.length % (dim * width) !== 0) {
    throw new Error(`${buf.length} bytes are not rows of ${dim} x ${width} bytes`);
  }
  const n = buf.length / width;
  let flat;
  if (width === 4 && os.endianness() === "LE") {
    flat = new Float32Array(n);
    new Uint8Array(flat.buffer).set(buf);
  } else {
    flat = new Float32Array(n);
    const view = new DataView(buf.buffer, buf.byteOffset, buf.length);
    for (let i = 0; i < n; i++) {
      flat[i] = width === 4 ? view.getFloat32(4 * i, true) : halfToFloat(view.getUint16(2 * i, true));
    }
  }
  const rows = [];
  for (let i = 0; i < n / dim; i++) rows.push(flat.subarray(i * dim, (i + 1) * dim));
  return rows;
}

/** A GetEmbeddingsResponse -> { modelVersion, dim, statuses, vectors, meta, history(i) }. */
function decodeEmbeddings(resp) {
  const vectors = decodeVectors(resp.vectors, resp.encoding, resp.dim);
  if (vectors.length !== resp.statuses.length) {
    throw new Error(`${vectors.length} vector rows for ${resp.statuses.length} statuses`);
  }
  const historyVectors = decodeVectors(resp.history_vectors, resp.encoding, resp.dim);
  const counts = resp.history_counts.length ? resp.history_counts : resp.statuses.map(() => 0);
  const starts = [];
  counts.reduce((at, c) => (starts.push(at), at + c), 0);
  return {
    modelVersion: resp.model_version,
    dim: resp.dim,
    statuses: resp.statuses,
    vectors,
    meta: resp.meta || {},
    historyCounts: counts,
    historyVectors,
    historyMeta: resp.history_meta || {},
    history: (i) => historyVectors.slice(starts[i], starts[i] + counts[i]),
  };
}

class PersonaClient {
  /**
   * @param {string} target e.g. "persona-serve:50051" or "dns:///persona-serve:50051"
   * @param {object} opts timeoutMs, maxAttempts, loadBalancing, token, credentials
   */
  constructor(target, opts = {}) {
    this.timeoutMs = opts.timeoutMs || 1000;
    const creds = opts.credentials || grpc.credentials.createInsecure();
    this.stub = new persona.UserEmbeddingService(target, creds, {
      "grpc.service_config": JSON.stringify(serviceConfig(opts)),
      "grpc.max_receive_message_length": 16 * 1024 * 1024,
    });
    this.metadata = new grpc.Metadata();
    if (opts.token) this.metadata.set("authorization", `Bearer ${opts.token}`);
  }

  _call(method, request, timeoutMs) {
    const deadline = new Date(Date.now() + (timeoutMs || this.timeoutMs));
    return new Promise((resolve, reject) => {
      this.stub[method](request, this.metadata, { deadline }, (err, resp) =>
        err ? reject(err) : resolve(resp),
      );
    });
  }

  /** Vectors of `userIds` in request order; opts: historyDepth, modelVersion, float16, fallbackPrior. */
  async getEmbeddings(userIds, opts = {}) {
    const resp = await this._call(
      "GetEmbeddings",
      {
        user_ids: userIds,
        history_depth: opts.historyDepth || 0,
        model_version: opts.modelVersion || "",
        encoding: opts.float16 ? "VECTOR_ENCODING_FLOAT16" : "VECTOR_ENCODING_FLOAT32",
        fallback: opts.fallbackPrior ? "FALLBACK_POPULATION_PRIOR" : "FALLBACK_NONE",
      },
      opts.timeoutMs,
    );
    return decodeEmbeddings(resp);
  }

  /** One of userId, vector, seeds; k, excludeSeeds, minScore, seedMode ("mean"|"union"). */
  async findLookalikes({ userId, vector, seeds, k = 10, excludeSeeds = false, minScore, seedMode = "mean", timeoutMs }) {
    const req = { k, exclude_seeds: excludeSeeds, seed_mode: seedMode === "union" ? "SEED_MODE_UNION" : "SEED_MODE_MEAN" };
    if (userId !== undefined) req.user_id = userId;
    else if (vector !== undefined) req.vector = { values: Array.from(vector) };
    else req.seeds = { user_ids: seeds };
    if (minScore !== undefined) req.min_score = minScore;
    const resp = await this._call("FindLookalikes", req, timeoutMs);
    return {
      modelVersion: resp.model_version,
      userIds: resp.neighbors.map((n) => n.user_id),
      scores: Float32Array.from(resp.neighbors.map((n) => n.score)),
      seedsUsed: resp.seeds_used,
      seedsMissing: resp.seeds_missing,
    };
  }

  getModelInfo(timeoutMs) {
    return this._call("GetModelInfo", {}, timeoutMs);
  }

  close() {
    this.stub.close();
  }
}

module.exports = { PersonaClient, serviceConfig, decodeVectors, decodeEmbeddings, halfToFloat, SERVICE };
