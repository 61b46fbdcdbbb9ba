// Proves the house rules hold in the code: src/raft is pure (no I/O, clocks, randomness or awaits) and
// dependencies point downward only (raft <- kv <- storage <- node <- http/chaos <- cli), and the client
// library (src/client) talks to nodes over HTTP only; only the node loop carries out Readies, and the
// simulator (src/sim) drives that loop rather than a copy of its own.
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const src = join(import.meta.dir, "..", "src");

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.tsx?$/.test(entry.name) && !/\.test\.tsx?$/.test(entry.name) ? [path] : [];
  });
}

function importsOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  return [...text.matchAll(/^\s*(?:import|export)[^'"]*?from\s+["']([^"']+)["']/gm)].map((m) => m[1] as string);
}

test("src/raft reaches nothing outside itself and src/lib: no bun:, node:, gen, clocks, randomness or await", () => {
  const offences: string[] = [];
  for (const file of sourceFiles(join(src, "raft"))) {
    const text = readFileSync(file, "utf8").replace(/\/\/.*$/gm, "").replace(/\/\*[\s\S]*?\*\//g, "");
    for (const spec of importsOf(file)) {
      if (!spec.startsWith("./") && !spec.startsWith("../lib/")) offences.push(`${relative(src, file)} imports ${spec}`);
    }
    for (const banned of [/\bDate\.now\b/, /\bMath\.random\b/, /\bsetTimeout\b/, /\bsetInterval\b/, /\bperformance\.now\b/, /\bawait\b/, /\basync\b/]) {
      if (banned.test(text)) offences.push(`${relative(src, file)} uses ${banned.source}`);
    }
  }
  expect(offences).toEqual([]);
});

test("dependencies point downward only", () => {
  // Each layer may import only the layers listed for it (and itself).
  const allowed: Record<string, string[]> = {
    lib: [],
    raft: ["lib"],
    gen: [],
    // The replicated state machine: what a command means (codec, apply plan, sessions, membership).
    // It knows nothing of how it is persisted: storage imports kv (it applies commands), never back.
    kv: ["lib", "raft"],
    storage: ["lib", "raft", "kv"],
    transport: ["lib", "raft", "gen"],
    // The simulator drives the node loop itself (src/sim/node-sim.ts) over the storage's in-memory
    // twin, and judges clients' answers with the linearizability checker kv chaos uses. Its network
    // runs the real transport's sender, peer service and reply slots (hence the generated types).
    sim: ["lib", "raft", "kv", "node", "storage", "transport", "gen", "chaos"],
    node: ["lib", "raft", "kv", "storage", "transport"],
    // http checks requests against the command codec's limits (src/kv/command.ts), not storage.
    http: ["lib", "node", "raft", "kv"],
    // The client library ("kv/client"): it reaches a node over HTTP only, so it imports none of the
    // server's layers (and no bun:/node: modules: see the test below).
    client: ["lib"],
    chaos: ["lib", "client"],
    bench: ["lib", "client"],
    // The composition root: assembles storage, node, transport, HTTP and metrics (createServer); a
    // joining server asks the cluster through the client.
    server: ["lib", "raft", "kv", "node", "storage", "transport", "http", "client"],
    cli: ["lib", "raft", "kv", "node", "storage", "transport", "http", "chaos", "bench", "sim", "server", "client"],
  };
  const offences: string[] = [];
  for (const file of sourceFiles(src)) {
    const layer = relative(src, file).split("/")[0] as string;
    if (!(layer in allowed)) continue;
    for (const spec of importsOf(file)) {
      const match = /^(?:\.\.\/)+([a-z]+)\//.exec(spec);
      if (match === null) continue;
      const target = match[1] as string;
      if (target !== layer && !(allowed[layer] as string[]).includes(target)) offences.push(`${relative(src, file)} (${layer}) imports ${spec}`);
    }
  }
  expect(offences).toEqual([]);
});

test("src/client imports no bun: or node: module: it talks to nodes with fetch only", () => {
  const offences: string[] = [];
  for (const file of sourceFiles(join(src, "client"))) {
    for (const spec of importsOf(file)) if (/^(bun|node):/.test(spec)) offences.push(`${relative(src, file)} imports ${spec}`);
  }
  expect(sourceFiles(join(src, "client")).length).toBeGreaterThan(0);
  expect(offences).toEqual([]);
});

test("the node loop drives the core through RawNode's methods only, and is the only caller of ready() outside the core", () => {
  const offences: string[] = [];
  for (const file of sourceFiles(join(src, "node"))) {
    const text = readFileSync(file, "utf8").replace(/\/\/.*$/gm, "");
    if (/\.raft\b/.test(text)) offences.push(`${relative(src, file)} reaches into RawNode.raft`);
  }
  // One loop (issue 12): the Ready loop lives in src/node/kv-node.ts, and nothing else in src
  // collects or carries out a Ready, the simulator included.
  const readyCallersAllowed = new Set(["node/kv-node.ts"]);
  for (const file of sourceFiles(src)) {
    const path = relative(src, file);
    if (path.startsWith("raft/") || readyCallersAllowed.has(path)) continue;
    const text = readFileSync(file, "utf8").replace(/\/\/.*$/gm, "");
    if (/\.ready\(/.test(text)) offences.push(`${path} calls ready()`);
  }
  expect(offences).toEqual([]);
});

test("RawNode keeps its core private: drivers see the core through RawNode's methods only", () => {
  const text = readFileSync(join(src, "raft", "raw-node.ts"), "utf8");
  expect(/private readonly raft: Raft;/.test(text)).toBe(true);
});

test("src/sim drives the node loop rather than its own: it imports src/node, and no core or Ready of its own", () => {
  const offences: string[] = [];
  const simFiles = sourceFiles(join(src, "sim"));
  for (const file of simFiles) {
    const path = relative(src, file);
    for (const spec of importsOf(file)) {
      // The core's driver API and its bare storage belong to the loop; types (messages, ids) are shared.
      if (/\/raft\/(raw-node|raft|memory-storage|log|progress)\.ts$/.test(spec)) offences.push(`${path} imports ${spec}`);
    }
    const text = readFileSync(file, "utf8").replace(/\/\/.*$/gm, "");
    for (const banned of [/\bnew RawNode\(/, /\bnew Raft\(/, /\.ready\(/, /\.advance\(/, /\.hasReady\(/]) {
      if (banned.test(text)) offences.push(`${path} uses ${banned.source}`);
    }
  }
  expect(simFiles.length).toBeGreaterThan(0);
  expect(offences).toEqual([]);
  // The simulator runs the server's loop: it constructs KvNode, from src/node.
  const nodeSim = readFileSync(join(src, "sim", "node-sim.ts"), "utf8");
  expect(nodeSim).toContain("new KvNode(");
  expect(importsOf(join(src, "sim", "node-sim.ts"))).toContain("../node/kv-node.ts");
});
