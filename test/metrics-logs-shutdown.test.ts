// Proves the node's operational surface: logs are one event per line (JSON with time, level, node, term, event and fields; a readable line on a terminal), and a node stops gracefully: requests in flight get a clear 503 `unavailable` before their connections close and the database is closed cleanly (its WAL checkpointed away) and reopens (on in-process servers), and on SIGTERM `kv serve` does so and exits 0 while a SIGKILLed one leaves its WAL behind (the logs and signal tests run the built executable).
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { createLogger } from "../src/lib/logger.ts";
import { nodeEventLevel, peerLineLevel } from "../src/server/create-server.ts";
import { createHttpHandler } from "../src/http/http-handler.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { kvCommand } from "./helpers/kv-binary.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-logs-shutdown-"));
afterAll(async () => {
  await killAllKvProcesses();
  rmSync(baseDir, { recursive: true, force: true });
});

describe("the logger", () => {
  function capture(isTty: boolean, format?: "json" | "text" | "auto") {
    const lines: string[] = [];
    let term: number | undefined;
    const logger = createLogger(7, "info", { isTty, write: (line) => lines.push(line), term: () => term, ...(format === undefined ? {} : { format }) });
    return { lines, logger, setTerm: (next: number) => (term = next) };
  }

  test("writes one JSON object per line when stderr is not a terminal: time, level, node, term, event, fields", () => {
    const { lines, logger, setTerm } = capture(false);
    logger.log("info", "started", { httpPort: 8001 });
    setTerm(3);
    logger.log("warn", "peer", { detail: 'peer 2: unreachable ("refused")' });
    logger.log("debug", "hidden");
    expect(lines).toHaveLength(2);
    for (const line of lines) expect(line.endsWith("\n") && !line.slice(0, -1).includes("\n")).toBe(true);
    const [first, second] = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(Object.keys(first!)).toEqual(["time", "level", "node", "event", "httpPort"]);
    expect(second).toMatchObject({ level: "warn", node: 7, term: 3, event: "peer", detail: 'peer 2: unreachable ("refused")' });
    expect(Object.keys(second!).slice(0, 5)).toEqual(["time", "level", "node", "term", "event"]);
    expect(new Date(second!.time as string).toISOString()).toBe(second!.time as string);
  });

  test("writes a readable line on a terminal, with multi-line fields (stacks) indented below it", () => {
    const { lines, logger, setTerm } = capture(true);
    setTerm(4);
    logger.log("error", "fatal", { error: "boom", stack: "Error: boom\n    at here" });
    logger.log("info", "role", { role: "leader", term: 5, members: [1, 2] });
    const plain = lines.map((line) => line.replace(/\x1b\[[0-9;]*m/g, ""));
    expect(plain[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} ERROR node=7 term=4 fatal error=boom\n {4}Error: boom\n {8}at here\n$/);
    expect(plain[1]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}node=7 role role=leader term=5 members=\[1,2\]\n$/);
  });

  test("no colour on a terminal when NO_COLOR is set (found in review: help honoured it, logs did not)", () => {
    const lines: string[] = [];
    createLogger(7, "info", { isTty: true, noColor: true, write: (line) => lines.push(line) }).log("warn", "peer", { a: 1 });
    expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} WARN {2}node=7 peer a=1\n$/);
    const saved = process.env.NO_COLOR;
    process.env.NO_COLOR = "1";
    try {
      const fromEnv: string[] = [];
      createLogger(7, "info", { isTty: true, write: (line) => fromEnv.push(line) }).log("warn", "peer");
      expect(fromEnv[0]).not.toContain("\x1b[");
    } finally {
      if (saved === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = saved;
    }
    const coloured: string[] = [];
    createLogger(7, "info", { isTty: true, noColor: false, write: (line) => coloured.push(line) }).log("warn", "peer");
    expect(coloured[0]).toContain("\x1b[");
  });

  test("the format can be forced either way", () => {
    const text = capture(false, "text");
    text.logger.log("info", "x", { a: "b c" });
    expect(text.lines[0]).toMatch(/INFO {2}node=7 x a="b c"\n$/);
    // A field left undefined is left out, as JSON leaves it (it read "entryIndex=undefined": found in a black-box review).
    text.logger.log("warn", "log cut", { segment: "s", entryIndex: undefined, bytesCut: 3 });
    expect(text.lines[1]).toMatch(/WARN {2}node=7 log cut segment=s bytesCut=3\n$/);
    const json = capture(true, "json");
    json.logger.log("info", "x");
    expect(JSON.parse(json.lines[0]!)).toMatchObject({ event: "x", node: 7 });
  });
});

describe("kv serve logs", () => {
  test("JSON lines when stderr is a pipe; --log-format text for people; a bad format is a usage error", async () => {
    const json = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir: join(baseDir, "json"), logFile: join(baseDir, "json.log") });
    await json.waitForLog('"role":"leader"');
    await json.terminate();
    const jsonLines = (await json.log()).trim().split("\n");
    for (const line of jsonLines) expect(Object.keys(JSON.parse(line) as object).slice(0, 3)).toEqual(["time", "level", "node"]);
    expect(JSON.parse(jsonLines.at(-1)!)).toMatchObject({ event: "stopped", code: 0, term: 1 });

    const proc = Bun.spawn(
      [...kvCommand(), "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", join(baseDir, "text"), "--log-format", "text"],
      { stdin: "ignore", stdout: "ignore", stderr: "pipe" },
    );
    try {
      let output = "";
      const decoder = new TextDecoder();
      const reader = proc.stderr.getReader();
      while (!/ node=1 role role=leader /.test(output)) {
        // Until the node logs that it leads.
        const { done, value } = await reader.read();
        if (done) break;
        output += decoder.decode(value, { stream: true });
      }
      expect(output).toMatch(/^\d\d:\d\d:\d\d\.\d{3} INFO {2}node=1 started peerPort=\d+ httpPort=\d+ /);
      proc.kill("SIGTERM");
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        output += decoder.decode(value, { stream: true });
      }
      expect(await proc.exited).toBe(0);
      expect(output).toMatch(/INFO {2}node=1 term=1 stopped code=0\n$/);
    } finally {
      proc.kill("SIGKILL");
    }

    const usage = Bun.spawnSync([...kvCommand(), "serve", "--id", "1", "--log-format", "xml"], { stderr: "pipe" });
    expect(usage.exitCode).toBe(2);
    expect(usage.stderr.toString()).toContain("--log-format must be json, text or auto");
  }, 30_000);
});

describe("graceful shutdown", () => {
  test("stop() answers requests in flight with 503 unavailable and leaves a cleanly closed database that reopens (in-process)", async () => {
    const dir = mkdtempSync(join(baseDir, "stop-"));
    // Long election timeouts: an isolated follower stays a follower (no pre-vote yet) for a while.
    const cluster = createServerCluster({ size: 3, baseDir: dir, logLevel: "info", config: () => ({ electionTicks: 100, requestTimeoutMs: 60_000 }) });
    try {
      await cluster.start();
      const leader = await cluster.waitForLeader();
      const put = await fetch(`${cluster.node(leader).httpUrl}/kv/before`, { method: "PUT", body: "kept" });
      expect(put.status).toBe(200);
      const { version } = (await put.json()) as { version: number };
      const convergedBy = performance.now() + 10_000;
      while (cluster.nodes.some(({ id }) => cluster.status(id)!.appliedIndex < version) && performance.now() < convergedBy) await Bun.sleep(10); // until every node applied it
      const followerId = cluster.nodes.find((node) => node.id !== leader)!.id;
      const follower = cluster.node(followerId);
      cluster.isolate(followerId);

      // Linearizable reads on the cut-off follower: each waits for a read index that cannot come.
      const inFlight = Array.from({ length: 6 }, () => fetch(`${follower.httpUrl}/kv/before`));
      const deadline = performance.now() + 10_000;
      for (;;) {
        const metricsText = await (await fetch(`${follower.httpUrl}/metrics`)).text();
        const inflight = Number(/^kv_http_requests_inflight (\d+)$/m.exec(metricsText)?.[1]);
        if (inflight >= 7) break; // the six reads, and this scrape
        if (performance.now() > deadline) throw new Error(`the reads never were in flight together: ${inflight}`);
        await Bun.sleep(10); // polling interval between scrapes
      }

      await follower.stop({ reason: "SIGTERM" }); // what kv serve does on SIGTERM
      for (const response of await Promise.all(inFlight)) {
        expect(response.status).toBe(503);
        const answer = (await response.json()) as { error: string; message: string };
        expect(answer.error).toBe("unavailable");
        expect(answer.message).toContain("shutting down");
      }
      const logLines = cluster.logs(followerId).trim().split("\n");
      const events = logLines.map((line) => JSON.parse(line) as { event: string; inflightRequests?: number });
      expect(events.find((event) => event.event === "stopping")?.inflightRequests).toBeGreaterThanOrEqual(6);
      expect(logLines.some((line) => line.includes("    at "))).toBe(false);
      // A clean close checkpoints the WAL into the database and removes it.
      expect(existsSync(join(dir, `node-${followerId}`, "kv.db-wal"))).toBe(false);

      // The database reopens: the node restarts on its data and still holds the acknowledged write.
      await cluster.kill(followerId); // forget the stopped server
      cluster.heal();
      const restarted = await cluster.startNode(followerId);
      await cluster.waitForLeader();
      expect(await (await fetch(`${restarted.httpUrl}/kv/before?consistency=stale`)).text()).toBe("kept");
    } finally {
      await cluster.stop();
    }
  }, 60_000);

  test("the term a log line carries is read from the core, so lines written after stop() closed the storage (a second SIGTERM's) still get it", async () => {
    const dir = mkdtempSync(join(baseDir, "term-after-stop-"));
    const cluster = createServerCluster({ size: 1, baseDir: dir });
    try {
      await cluster.start();
      const node = cluster.node(1).node;
      const term = node.currentTerm();
      expect(term).toBe(node.status().term);
      await cluster.node(1).stop({ reason: "SIGTERM" });
      // kv serve's logger asked status() for the term: after stop() it threw (storage used after
      // close), so a second signal's "stopping now" line crashed instead of exiting 1.
      expect(() => node.status()).toThrow(/after close/);
      expect(node.currentTerm()).toBe(term);
    } finally {
      await cluster.stop();
    }
  }, 30_000);

  test("stop() ends each open watch stream with its final event: error unavailable, and the stream's end, before the connection closes", async () => {
    const dir = mkdtempSync(join(baseDir, "stop-watch-"));
    const cluster = createServerCluster({ size: 1, baseDir: dir });
    try {
      await cluster.start();
      const node = cluster.node(1);
      const response = await fetch(`${node.httpUrl}/watch?prefix=zz`);
      expect(response.status).toBe(200);
      const reader = response.body!.getReader();
      let received = "";
      const first = await reader.read(); // the opening progress event: the stream is live
      received += new TextDecoder().decode(first.value);
      expect(received).toContain("event: progress");
      const stopped = node.stop({ reason: "SIGTERM" });
      // Before, the connection was closed with only progress sent: no error event, and no end of
      // the chunked body (curl exited 18: transfer closed with outstanding read data remaining).
      let ended: "done" | string = "";
      for (;;) {
        const chunk = await reader.read().catch((error: unknown) => ({ done: true, value: undefined, error }));
        if ("error" in chunk) {
          ended = `cut: ${String(chunk.error)}`;
          break;
        }
        if (chunk.done) {
          ended = "done";
          break;
        }
        received += new TextDecoder().decode(chunk.value);
      }
      await stopped;
      expect(received).toContain('event: error\ndata: {"error":"unavailable"');
      expect(ended).toBe("done");
    } finally {
      await cluster.stop();
    }
  }, 30_000);

  test("kv serve on SIGTERM answers requests in flight with 503 unavailable, exits 0 and leaves a cleanly closed database; SIGKILL leaves the WAL behind", async () => {
    const dir = mkdtempSync(join(baseDir, "sigterm-"));
    // Two processes (the fewest with a follower that knows a leader); long election timeouts: the
    // isolated follower stays a follower for a while.
    const cluster = new ChaosCluster({ size: 2, command: kvCommand(), baseDir: dir, serveArgs: ["--election-ticks", "100", "--request-timeout-ms", "60000"] });
    try {
      await cluster.start();
      const leader = await cluster.waitForLeader();
      const put = await fetch(`${cluster.node(leader).httpUrl}/kv/before`, { method: "PUT", body: "kept" });
      expect(put.status).toBe(200);
      await cluster.waitForConvergence(((await put.json()) as { version: number }).version);
      const follower = cluster.nodes.find((node) => node.id !== leader)!;
      cluster.isolate(follower.id);

      // A linearizable read on the cut-off follower waits for a read index that cannot come.
      const inFlight = fetch(`${follower.httpUrl}/kv/before`);
      const deadline = performance.now() + 10_000;
      for (;;) {
        const metricsText = await (await fetch(`${follower.httpUrl}/metrics`)).text();
        const inflight = Number(/^kv_http_requests_inflight (\d+)$/m.exec(metricsText)?.[1]);
        if (inflight >= 2) break; // the read, and this scrape
        if (performance.now() > deadline) throw new Error(`the read never was in flight: ${inflight}`);
        await Bun.sleep(10); // polling interval between scrapes
      }

      expect(await cluster.terminate(follower.id)).toBe(0);
      const response = await inFlight;
      expect(response.status).toBe(503);
      expect(((await response.json()) as { error: string }).error).toBe("unavailable");
      const logLines = (await Bun.file(follower.logFile).text()).trim().split("\n");
      const events = logLines.map((line) => JSON.parse(line) as { event: string; code?: number });
      expect(events.at(-1)).toMatchObject({ event: "stopped", code: 0 });
      expect(logLines.some((line) => line.includes("    at "))).toBe(false);
      // A clean close checkpoints the WAL into the database and removes it; a killed node leaves it behind.
      expect(existsSync(join(follower.dataDir, "kv.db-wal"))).toBe(false);
      await cluster.kill(leader);
      expect(existsSync(join(cluster.node(leader).dataDir, "kv.db-wal"))).toBe(true);
    } finally {
      await cluster.stop();
    }
  }, 60_000);

  test("once shutdown begins, new requests get 503 unavailable with Connection: close; idle() waits for those in flight", async () => {
    const node = new MemoryKvNode();
    const handler = createHttpHandler(node, {});
    let release: () => void = () => {};
    let putCalled: () => void = () => {};
    const reachedNode = new Promise<void>((resolve) => (putCalled = resolve));
    node.put = () =>
      new Promise((resolve) => {
        release = () => resolve({ version: 1 });
        putCalled();
      });
    const pending = handler.handle(new Request("http://localhost/kv/a", { method: "PUT", body: "v" }));
    await reachedNode; // the write waits on the node, as one waiting for a commit would
    expect(handler.inflightRequests()).toBe(1);
    let idle = false;
    const idlePromise = handler.idle().then(() => (idle = true));
    handler.beginShutdown();
    const refused = await handler.handle(new Request("http://localhost/kv/a"));
    expect(refused.status).toBe(503);
    expect(refused.headers.get("connection")).toBe("close");
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(((await refused.json()) as { error: string }).error).toBe("unavailable");
    expect(idle).toBe(false);
    release();
    const answered = await pending;
    expect(answered.status).toBe(200);
    expect(answered.headers.get("connection")).toBe("close");
    await idlePromise;
    expect(handler.inflightRequests()).toBe(0);
  });
});

describe("the level of a node's events", () => {
  test("a peer reachable again is info; one unreachable or refusing is a warning (a review counted 31 recoveries at warn)", () => {
    expect(["peer 2: reachable again", "peer 2: unreachable (connection to 127.0.0.1:5002 lost (network:ECONNREFUSED))", "peer 2: refuses our calls (x)"].map(peerLineLevel)).toEqual([
      "info",
      "warn",
      "warn",
    ]);
  });

  test("a full disk, which freezes the node until an operator acts, is an error as at start; retried failures are warnings; the rest info", () => {
    expect(["fatal", "disk full", "snapshot send failed", "learner promotion failed", "quota exceeded", "quorum lost", "quota ok", "disk space back", "role", "snapshot sent"].map(nodeEventLevel)).toEqual([
      "error",
      "error",
      "warn",
      "warn",
      "warn", // a write outage (found in a black-box review: it was info)
      "warn", // a leader stepped down for want of a majority (same review)
      "info",
      "info",
      "info",
      "info",
    ]);
  });
});
