// Proves a live node enforces --key-bytes-max and --value-bytes-max (413 too_large, answered before the body is read when its length is declared, and the connection closed after a bounded lingering close), answers bad keys and parameters with 400s that say what is wrong and unknown routes and methods with JSON 404/405, and replicates a value larger than one Raft append.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChaosCluster } from "../src/chaos/cluster.ts";
import { kvCommand } from "./helpers/kv-binary.ts";
import { killAllKvProcesses, startKvProcess, type KvProcess } from "./helpers/kv-process.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-security-limits-"));
afterEach(() => killAllKvProcesses());
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

async function startLimited(name: string): Promise<KvProcess> {
  const node = await startKvProcess({
    id: 1,
    cluster: "1=http://127.0.0.1:0",
    dataDir: join(baseDir, name),
    logFile: join(baseDir, `${name}.log`),
    args: ["--key-bytes-max", "16", "--value-bytes-max", "1024"],
  });
  await node.waitForLog('"role":"leader"');
  return node;
}

async function expectError(response: Response, status: number, error: string): Promise<string> {
  expect(response.status).toBe(status);
  expect(response.headers.get("content-type")).toStartWith("application/json");
  const body = (await response.json()) as { error: string; message: string };
  expect(body.error).toBe(error);
  return body.message;
}

/** Writes `head` (and nothing more) on a raw connection; resolves with everything read until the server closes. */
function rawUntilClosed(port: number, head: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = "";
    void Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(socket) {
          socket.write(head);
        },
        data(_socket, chunk) {
          received += new TextDecoder().decode(chunk);
        },
        close() {
          resolve(received);
        },
        error(_socket, error) {
          reject(error);
        },
      },
    });
  });
}

describe("a node started with --key-bytes-max 16 --value-bytes-max 1024", () => {
  test("values: at the limit 200, over it 413 too_large", async () => {
    const node = await startLimited("values");
    expect((await fetch(`${node.httpUrl}/kv/v`, { method: "PUT", body: new Uint8Array(1024) })).status).toBe(200);
    expect(await expectError(await fetch(`${node.httpUrl}/kv/v`, { method: "PUT", body: new Uint8Array(1025) }), 413, "too_large")).toContain("1024");
    // A chunked body (no Content-Length) is read only up to the limit.
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 10; i++) controller.enqueue(new Uint8Array(512));
        controller.close();
      },
    });
    await expectError(await fetch(`${node.httpUrl}/kv/v`, { method: "PUT", body: stream }), 413, "too_large");
    expect((await fetch(`${node.httpUrl}/kv/v`)).headers.get("content-length")).toBe("1024");
  });

  test("a declared oversized body is answered before a byte of it is sent, and the connection closes once the lingering close gives up", async () => {
    const node = await startLimited("declared");
    const port = Number(new URL(node.httpUrl).port);
    // The body never comes: only an answer given before reading it can arrive. The node then waits
    // for the rest of the body (at most LINGER_MS_MAX) and closes the connection.
    const answer = await rawUntilClosed(port, "PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n");
    expect(answer).toStartWith("HTTP/1.1 413");
    expect(answer.toLowerCase()).toContain("connection: close");
    expect(answer).toContain('"error":"too_large"');
  }, 20_000);

  test("keys: 16 bytes fine, 17 bytes 413, empty and invalid UTF-8 400 saying why", async () => {
    const node = await startLimited("keys");
    expect((await fetch(`${node.httpUrl}/kv/${"k".repeat(16)}`, { method: "PUT", body: "v" })).status).toBe(200);
    expect((await fetch(`${node.httpUrl}/kv/${"%E2%9C%93".repeat(5)}`, { method: "PUT", body: "v" })).status).toBe(200); // 15 bytes
    await expectError(await fetch(`${node.httpUrl}/kv/${"k".repeat(17)}`, { method: "PUT", body: "v" }), 413, "too_large");
    await expectError(await fetch(`${node.httpUrl}/kv/${"%E2%9C%93".repeat(6)}`, { method: "PUT", body: "v" }), 413, "too_large"); // 18 bytes
    // A read of a longer key is no write: absent, not refused (keys written under a higher limit stay readable).
    await expectError(await fetch(`${node.httpUrl}/kv/${"%E2%9C%93".repeat(6)}`), 404, "not_found");
    expect(await expectError(await fetch(`${node.httpUrl}/kv/`), 400, "bad_request")).toContain("empty");
    expect(await expectError(await fetch(`${node.httpUrl}/kv/%FF`), 400, "bad_request")).toContain("UTF-8");
    expect(await expectError(await fetch(`${node.httpUrl}/kv/%ED%A0%80`), 400, "bad_request")).toContain("UTF-8"); // a surrogate
    expect(await expectError(await fetch(`${node.httpUrl}/kv/%C0%AF`), 400, "bad_request")).toContain("UTF-8"); // overlong "/"
    expect(await expectError(await fetch(`${node.httpUrl}/kv/a%G0`), 400, "bad_request")).toContain("percent-encoded");
  });

  test("bad parameters 400, unknown routes 404 and wrong methods 405, all JSON", async () => {
    const node = await startLimited("routes");
    expect(await expectError(await fetch(`${node.httpUrl}/kv/a?consistency=eventual`), 400, "bad_request")).toContain("consistency");
    expect(await expectError(await fetch(`${node.httpUrl}/kv/a?consistency=stale&consistency=stale`), 400, "bad_request")).toContain("once");
    expect(await expectError(await fetch(`${node.httpUrl}/leader/transfer?to=zero`, { method: "POST" }), 400, "bad_request")).toContain("'to'");
    await expectError(await fetch(`${node.httpUrl}/nope`), 404, "not_found");
    await expectError(await fetch(`${node.httpUrl}/kv/a`), 404, "not_found");
    const patch = await fetch(`${node.httpUrl}/kv/a`, { method: "PATCH" });
    expect(patch.headers.get("allow")).toBe("GET, HEAD, PUT, DELETE");
    await expectError(patch, 405, "method_not_allowed");
    await expectError(await fetch(`${node.httpUrl}/status`, { method: "DELETE" }), 405, "method_not_allowed");
    await expectError(await fetch(`${node.httpUrl}/metrics`, { method: "POST" }), 405, "method_not_allowed");
  });

  test("a '#' in the request target is a 400 and nothing is written: the key was cut at it and its ?ifVersion dropped (found in a black-box review)", async () => {
    const node = await startLimited("fragment");
    const port = Number(new URL(node.httpUrl).port);
    const answer = await rawUntilClosed(port, "PUT /kv/fr#x?ifVersion=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv");
    expect(answer).toStartWith("HTTP/1.1 400");
    expect(answer).toContain('"error":"bad_request"');
    expect(answer).toContain("%23");
    await expectError(await fetch(`${node.httpUrl}/kv/fr`), 404, "not_found");
    expect((await fetch(`${node.httpUrl}/kv/fr%23x`, { method: "PUT", body: "v" })).status).toBe(200);
    expect(await (await fetch(`${node.httpUrl}/kv?prefix=fr`)).json()).toMatchObject({ items: [{ key: "fr#x", value: "v" }] });
  });

  test("limit flags out of range are usage errors", () => {
    for (const args of [["--key-bytes-max", "0"], ["--key-bytes-max", "100000"], ["--value-bytes-max", "-1"], ["--value-bytes-max", "99999999999"]]) {
      const result = Bun.spawnSync([...kvCommand(), "serve", "--id", "1", "--data-dir", join(baseDir, "usage"), ...args], { stderr: "pipe" });
      expect({ args, code: result.exitCode }).toEqual({ args, code: 2 });
      expect(result.stderr.toString()).toContain(args[0]!);
    }
  });
});

test("a 3 MiB value, larger than one Raft append (1 MiB), is accepted under --value-bytes-max 4194304 and replicated", async () => {
  const dir = mkdtempSync(join(baseDir, "big-"));
  const cluster = new ChaosCluster({ size: 3, command: kvCommand(), baseDir: dir, serveArgs: ["--value-bytes-max", String(4 << 20)] });
  try {
    await cluster.start();
    const value = new Uint8Array(3 << 20).map((_, i) => (i * 7) & 0xff);
    // Writing 3 MiB still holds the leader's loop long enough, on a busy 2-core machine, for the
    // followers to elect another leader now and then (the node-loop issue): the client then gets a
    // retryable 503, and retries under one Idempotency-Key, so the write applies once.
    let put: Response | undefined;
    const deadline = performance.now() + 30_000;
    for (;;) {
      const leader = await cluster.waitForLeader();
      put = await fetch(`${cluster.node(leader).httpUrl}/kv/big`, { method: "PUT", body: value, headers: { "idempotency-key": "big-1" } });
      if (put.status !== 503 || performance.now() > deadline) break;
      await put.arrayBuffer();
    }
    expect(put.status).toBe(200);
    const { version } = (await put.json()) as { version: number };
    await cluster.waitForConvergence(version);
    for (const node of cluster.nodes) {
      expect(new Uint8Array(await (await fetch(`${node.httpUrl}/kv/big?consistency=stale`)).arrayBuffer())).toEqual(value);
    }
  } finally {
    await cluster.stop();
  }
}, 60_000);
