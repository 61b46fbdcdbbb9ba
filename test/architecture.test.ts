// Proves the house rules hold in the code: src/raft is pure (no I/O, clocks, randomness or awaits) and
// dependencies point downward only (raft <- kv <- storage <- node <- http/chaos <- cli), and the client
// library (src/client) talks to nodes over HTTP only; only the node loop carries out Readies, and the
// simulator (src/sim) drives that loop rather than a copy of its own.
//
// The checks read the sources as the compiler does (test/helpers/source-graph.ts): an import written
// without `.ts`, a dynamic `import()`, `require()`, `raw["ready"]()` or an alias of a class is seen
// for what it is (a review showed text patterns let each of them through).
import { expect, test } from "bun:test";
import { join } from "node:path";
import ts from "typescript";
import { isAmbient, isClass, isMemberOf, nodesOf, SRC, sourceFiles, sourceGraph, symbolAt } from "./helpers/source-graph.ts";

const RAW_NODE = join(SRC, "raft", "raw-node.ts");
const RAFT = join(SRC, "raft", "raft.ts");
const KV_NODE = join(SRC, "node", "kv-node.ts");
/** The layer (first folder under src/) of a file. */
const layerOf = (file: string): string => sourceGraph().name(file).split("/")[0] as string;

/**
 * Globals src/raft (and whatever of src/lib it reaches) must not use: clocks, timers, randomness,
 * promises, I/O, the process and its environment, and what the garbage collector decides.
 */
const IMPURE_GLOBALS = new Set([
  "Date", "performance", "setTimeout", "setInterval", "setImmediate", "clearTimeout", "clearInterval", "clearImmediate",
  "queueMicrotask", "crypto", "process", "Bun", "fetch", "require", "Promise", "Worker", "WebSocket", "console",
  "globalThis", "navigator", "WeakRef", "FinalizationRegistry", "eval", "Function", "Deno", "Buffer",
  "AbortSignal", "AbortController", "Intl", "Temporal", "Atomics", "MessageChannel", "BroadcastChannel",
]);

/** Why each node of `file` breaks src/raft's purity, if it does. */
function impurities(file: string): string[] {
  const graph = sourceGraph();
  const found: string[] = [];
  for (const node of nodesOf(graph.sourceFile(file))) {
    if (ts.isAwaitExpression(node) || ts.isForOfStatement(node) && node.awaitModifier !== undefined) found.push("await");
    else if (ts.canHaveModifiers(node) && ts.getModifiers(node)?.some((modifier) => modifier.kind === ts.SyntaxKind.AsyncKeyword)) found.push("async");
    else if (ts.isIdentifier(node) && IMPURE_GLOBALS.has(node.text)) {
      const symbol = symbolAt(graph.checker, node);
      // A global the runtime declares, not a local binding or a property that happens to share the name.
      if (symbol !== undefined && isAmbient(symbol) && !(symbol.flags & ts.SymbolFlags.Property) && !(symbol.flags & ts.SymbolFlags.Method)) found.push(node.text);
    } else if (ts.isIdentifier(node) && node.text === "Math") {
      // Math's functions by name only (Math.floor), never Math.random, and Math itself never taken
      // as a value (`const m = Math`, `const { random } = Math`, `Math["random"]`), which would hide
      // which of its members is used (found in review).
      const symbol = symbolAt(graph.checker, node);
      if (symbol === undefined || !isAmbient(symbol)) continue;
      const parent = node.parent;
      if (!ts.isPropertyAccessExpression(parent) || parent.expression !== node) found.push("Math other than Math.<function>");
      else if (parent.name.text === "random") found.push("Math.random");
    }
  }
  return [...new Set(found)];
}

test("src/raft reaches nothing outside itself and src/lib, and nothing it reaches uses clocks, timers, randomness, promises or I/O", () => {
  const graph = sourceGraph();
  const offences: string[] = [];
  // Everything src/raft reaches, transitively: a module of src/lib it imports is held to the same rule.
  const reached = new Set(sourceFiles(join(SRC, "raft")));
  const queue = [...reached];
  while (queue.length > 0) {
    const file = queue.shift() as string;
    for (const reference of graph.references(file)) {
      if (reference.file === undefined) {
        offences.push(`${graph.name(file)} imports ${reference.specifier}`);
        continue;
      }
      const layer = layerOf(reference.file);
      if (layer !== "raft" && layer !== "lib") offences.push(`${graph.name(file)} imports ${reference.specifier}`);
      else if (!reached.has(reference.file)) {
        reached.add(reference.file);
        queue.push(reference.file);
      }
    }
  }
  for (const file of reached) for (const impurity of impurities(file)) offences.push(`${graph.name(file)} uses ${impurity}`);
  expect([...reached].filter((file) => layerOf(file) === "lib").length).toBeGreaterThan(0);
  expect(offences).toEqual([]);
});

test("the purity check finds what it looks for (a file of src/lib that src/raft does not reach uses clocks and timers)", () => {
  // src/lib/clock.ts is the system clock: were src/raft to reach it, the check above would fail.
  const found = impurities(join(SRC, "lib", "clock.ts"));
  expect(found).toContain("performance");
  expect(found).toContain("setInterval");
});

test("dependencies point downward only", () => {
  const graph = sourceGraph();
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
  for (const file of sourceFiles(SRC)) {
    const layer = layerOf(file);
    if (!(layer in allowed) || layer === "gen") continue;
    for (const reference of graph.references(file)) {
      if (reference.computed) offences.push(`${graph.name(file)} imports a module named at run time (${reference.specifier})`);
      if (reference.file === undefined) continue;
      const target = layerOf(reference.file);
      if (target !== layer && !(allowed[layer] as string[]).includes(target)) offences.push(`${graph.name(file)} (${layer}) imports ${reference.specifier}`);
    }
  }
  expect(offences).toEqual([]);
});

test("src/client imports no bun: or node: module: it talks to nodes with fetch only", () => {
  const graph = sourceGraph();
  const offences: string[] = [];
  for (const file of sourceFiles(join(SRC, "client"))) {
    for (const reference of graph.references(file)) if (/^(bun|node):/.test(reference.specifier)) offences.push(`${graph.name(file)} imports ${reference.specifier}`);
  }
  expect(sourceFiles(join(SRC, "client")).length).toBeGreaterThan(0);
  expect(offences).toEqual([]);
});

/** RawNode's members a driver's loop uses to carry out Readies. */
const READY_MEMBERS = ["ready", "hasReady", "advance"];

test("only the node loop carries out Readies, and nothing outside src/raft reaches RawNode's core", () => {
  const graph = sourceGraph();
  const offences: string[] = [];
  for (const file of sourceFiles(SRC)) {
    const layer = layerOf(file);
    if (layer === "raft" || layer === "gen") continue;
    for (const node of nodesOf(graph.sourceFile(file))) {
      // A RawNode cast to some other shape would hide which of its members is reached (found in review).
      if ((ts.isAsExpression(node) || ts.isTypeAssertionExpression(node)) && !ts.isConstTypeReference(node.type)) {
        const target = graph.checker.getTypeAtLocation(node.expression).getSymbol();
        if (target !== undefined && isClass(target, RAW_NODE, "RawNode")) offences.push(`${graph.name(file)} casts a RawNode`);
      }
      // `raw[name]` with a name computed: which member it reaches cannot be told, so it is not done.
      if (ts.isElementAccessExpression(node) && !ts.isStringLiteralLike(node.argumentExpression)) {
        const target = graph.checker.getTypeAtLocation(node.expression).getSymbol();
        if (target !== undefined && isClass(target, RAW_NODE, "RawNode")) offences.push(`${graph.name(file)} indexes RawNode by a computed name`);
      }
      // `const { ready } = raw`: the name bound is a local's, the member taken RawNode's.
      if (ts.isBindingElement(node) && ts.isObjectBindingPattern(node.parent)) {
        const source = graph.checker.getTypeAtLocation(node.parent).getSymbol();
        const member = node.propertyName ?? node.name;
        if (source !== undefined && isClass(source, RAW_NODE, "RawNode") && (ts.isIdentifier(member) || ts.isStringLiteral(member))) {
          if (member.text === "raft") offences.push(`${graph.name(file)} reaches into RawNode.raft`);
          else if (file !== KV_NODE && READY_MEMBERS.includes(member.text)) offences.push(`${graph.name(file)} uses RawNode.${member.text}`);
        }
      }
      // A name, or a string in `raw["ready"]`: whatever it refers to, however it is written.
      if (!ts.isIdentifier(node) && !ts.isStringLiteral(node)) continue;
      // Only names RawNode's members bear can be them (asking the checker about every name is slow).
      if (node.text !== "raft" && !READY_MEMBERS.includes(node.text)) continue;
      const symbol = symbolAt(graph.checker, node);
      if (symbol === undefined) continue;
      // RawNode keeps its core private; TypeScript lets `raw["raft"]` through all the same.
      if (isMemberOf(symbol, RAW_NODE, "RawNode", "raft")) offences.push(`${graph.name(file)} reaches into RawNode.raft`);
      // One loop (issue 12): the Ready loop lives in src/node/kv-node.ts, the simulator included.
      if (file !== KV_NODE && READY_MEMBERS.some((member) => isMemberOf(symbol, RAW_NODE, "RawNode", member))) offences.push(`${graph.name(file)} uses RawNode.${symbol.name}`);
    }
  }
  expect(offences).toEqual([]);
});

test("the Ready check finds what it looks for (the loop itself calls ready, hasReady and advance)", () => {
  const graph = sourceGraph();
  const used = new Set<string>();
  for (const node of nodesOf(graph.sourceFile(KV_NODE))) {
    if (!ts.isIdentifier(node)) continue;
    const symbol = symbolAt(graph.checker, node);
    if (symbol === undefined) continue;
    for (const member of READY_MEMBERS) if (isMemberOf(symbol, RAW_NODE, "RawNode", member)) used.add(member);
  }
  expect([...used].sort()).toEqual([...READY_MEMBERS].sort());
});

test("no source escapes the type checker: no any, no @ts-ignore, @ts-expect-error or @ts-nocheck", () => {
  // The checks above trust the types: a value cast to any could reach RawNode's core unseen.
  const graph = sourceGraph();
  const offences: string[] = [];
  for (const file of sourceFiles(SRC)) {
    if (layerOf(file) === "gen") continue;
    const source = graph.sourceFile(file);
    if (/@ts-(ignore|expect-error|nocheck)/.test(source.text)) offences.push(`${graph.name(file)} silences the checker`);
    for (const node of nodesOf(source)) if (node.kind === ts.SyntaxKind.AnyKeyword) offences.push(`${graph.name(file)} uses any`);
  }
  expect(offences).toEqual([]);
});

test("RawNode keeps its core private: drivers see the core through RawNode's methods only", () => {
  const graph = sourceGraph();
  const core = graph.sourceFile(RAW_NODE).statements.filter(ts.isClassDeclaration).find((declaration) => declaration.name?.text === "RawNode");
  const raft = core?.members.find((member) => member.name !== undefined && ts.isIdentifier(member.name) && member.name.text === "raft");
  expect(raft).toBeDefined();
  expect(ts.getCombinedModifierFlags(raft as ts.Declaration) & ts.ModifierFlags.Private).toBe(ts.ModifierFlags.Private);
});

test("src/sim drives the node loop rather than its own: it constructs KvNode, and no core, Raft or Ready of its own", () => {
  const graph = sourceGraph();
  const offences: string[] = [];
  const simFiles = sourceFiles(join(SRC, "sim"));
  let constructsKvNode = false;
  for (const file of simFiles) {
    for (const reference of graph.references(file)) {
      // The core's driver API and its bare storage belong to the loop; types (messages, ids) are shared.
      if (reference.file !== undefined && /\/raft\/(raw-node|raft|memory-storage|log|progress)\.ts$/.test(reference.file)) offences.push(`${graph.name(file)} imports ${reference.specifier}`);
    }
    for (const node of nodesOf(graph.sourceFile(file))) {
      if (ts.isIdentifier(node)) {
        const symbol = symbolAt(graph.checker, node);
        if (symbol !== undefined && (isClass(symbol, RAW_NODE, "RawNode") || isClass(symbol, RAFT, "Raft"))) offences.push(`${graph.name(file)} uses ${symbol.name}`);
      }
      // Whatever the types say (a cast to some shape of its own), the simulator calls nothing of these names.
      const named = ts.isPropertyAccessExpression(node) ? node.name.text : ts.isElementAccessExpression(node) && ts.isStringLiteralLike(node.argumentExpression) ? node.argumentExpression.text : undefined;
      if (named !== undefined && READY_MEMBERS.includes(named)) offences.push(`${graph.name(file)} uses .${named}`);
      if (ts.isNewExpression(node)) {
        const symbol = symbolAt(graph.checker, node.expression);
        if (symbol !== undefined && isClass(symbol, KV_NODE, "KvNode")) constructsKvNode = true;
      }
    }
  }
  expect(simFiles.length).toBeGreaterThan(0);
  expect(offences).toEqual([]);
  // The simulator runs the server's loop: it constructs KvNode, from src/node.
  expect(constructsKvNode).toBe(true);
});

/**
 * What would make a swarm seed replay differently: a clock, a timer or randomness not passed in.
 * The node loop and the simulator take their clock, scheduler and PRNG as inputs (src/node/kv-node.ts,
 * `KvNodeConfig`); `setImmediate` is allowed only as the server's default scheduler and as the
 * simulator's way to let promise callbacks run (they are ordered, not timed).
 */
const SEED_BREAKERS = new Set(["Date", "performance", "setTimeout", "setInterval", "clearTimeout", "clearInterval", "crypto", "process", "Bun", "Worker"]);

/** Where `file` reads a clock, starts a timer or draws randomness of its own. */
function seedBreakers(file: string): string[] {
  const graph = sourceGraph();
  const found: string[] = [];
  for (const node of nodesOf(graph.sourceFile(file))) {
    if (!ts.isIdentifier(node) || (!SEED_BREAKERS.has(node.text) && node.text !== "Math")) continue;
    const symbol = symbolAt(graph.checker, node);
    if (symbol === undefined || !isAmbient(symbol) || symbol.flags & ts.SymbolFlags.Property || symbol.flags & ts.SymbolFlags.Method) continue;
    const parent = node.parent;
    const member = ts.isPropertyAccessExpression(parent) && parent.expression === node ? parent.name.text : undefined;
    // A fixed instant (`Date.UTC(...)`) and Math's functions are the same on every run; a type is no call.
    if (node.text === "Date" && member === "UTC") continue;
    if (node.text === "Math" && member !== "random") continue;
    if (ts.isTypeReferenceNode(parent) || ts.isTypeQueryNode(parent)) continue;
    found.push(member === undefined ? node.text : `${node.text}.${member}`);
  }
  return [...new Set(found)];
}

test("a swarm seed replays: the node loop, the simulator and the transport modules it runs read no clock, start no timer and draw no randomness of their own (found in a review: nothing kept them out)", () => {
  const files = [
    ...sourceFiles(join(SRC, "node")),
    ...sourceFiles(join(SRC, "sim")),
    ...["peer-sender.ts", "raft-service.ts", "reply-slots.ts", "snapshot-sender.ts", "codec.ts", "peer-call-guard.ts"].map((name) => join(SRC, "transport", name)),
  ];
  const offences = files.flatMap((file) => seedBreakers(file).map((use) => `${sourceGraph().name(file)} uses ${use}`));
  expect(files.length).toBeGreaterThan(10);
  expect(offences).toEqual([]);
  // And the check finds what it looks for: the system clock reads the time and starts timers.
  expect(seedBreakers(join(SRC, "lib", "clock.ts"))).toEqual(expect.arrayContaining(["performance.now", "setInterval"]));
});
