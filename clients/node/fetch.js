#!/usr/bin/env node
// Asks a persona serve for embeddings and lookalikes and prints one JSON object
// (tests/clients/test_node_client.py checks it against the store).
//   node clients/node/fetch.js --target 127.0.0.1:50051 --ids u1,u2 --history 2 --lookalike u1 --k 5
"use strict";

const { parseArgs } = require("node:util");
const { PersonaClient } = require("./index.js");

async function main() {
  const { values: a } = parseArgs({
    options: {
      target: { type: "string", default: "127.0.0.1:50051" },
      ids: { type: "string", default: "" },
      history: { type: "string", default: "0" },
      float16: { type: "boolean", default: false },
      lookalike: { type: "string" },
      k: { type: "string", default: "5" },
      "timeout-ms": { type: "string", default: "5000" },
    },
  });
  const client = new PersonaClient(a.target, {
    timeoutMs: Number(a["timeout-ms"]),
    token: process.env.PERSONA_TOKEN,
  });
  try {
    const ids = a.ids.split(",");
    const emb = await client.getEmbeddings(ids, { historyDepth: Number(a.history), float16: a.float16 });
    const out = {
      model_version: emb.modelVersion,
      statuses: emb.statuses,
      vectors: emb.vectors.map((r) => Array.from(r)),
      n_events: emb.meta.n_events,
      age_seconds: emb.meta.age_seconds,
      history_counts: emb.historyCounts,
      history_vectors: emb.historyVectors.map((r) => Array.from(r)),
    };
    if (a.lookalike) {
      const near = await client.findLookalikes({ userId: a.lookalike, k: Number(a.k) });
      out.neighbors = near.userIds;
      out.scores = Array.from(near.scores);
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  } finally {
    client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`fetch.js: ${err.code !== undefined ? `code ${err.code}: ` : ""}${err.message}\n`);
  process.exit(1);
});
