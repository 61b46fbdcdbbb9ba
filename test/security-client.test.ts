// Proves client authentication: with --auth-token every client API request but /health needs `Authorization: Bearer <token>` (401 JSON `unauthenticated` otherwise, before any route runs), /status and /metrics follow the token unless --metrics-open, and a real node enforces it. The client library and kv snapshot save follow a 307 only where the token may go.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHttpHandler } from "../src/http/http-handler.ts";
import type { HttpHandlerOptions } from "../src/http/http-handler.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { createMetricsRegistry } from "../src/lib/metrics.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";

const ORIGIN = "http://localhost";
const TOKEN = "client-token-0123456789abcdef";

function handlerWith(options: HttpHandlerOptions) {
  const node = new MemoryKvNode();
  const handler = createHttpHandler(node, { metrics: createMetricsRegistry(), ...options });
  const call = (method: string, path: string, headers: Record<string, string> = {}, body?: string) =>
    handler.handle(new Request(ORIGIN + path, { method, headers, ...(body === undefined ? {} : { body }) }));
  return { node, handler, call };
}

async function expectUnauthenticated(response: Response): Promise<string> {
  expect(response.status).toBe(401);
  expect(response.headers.get("content-type")).toStartWith("application/json");
  expect(response.headers.get("www-authenticate")).toBe('Bearer realm="kv"');
  const body = (await response.json()) as { error: string; message: string };
  expect(body.error).toBe("unauthenticated");
  return body.message;
}

const bearer = { authorization: `Bearer ${TOKEN}` };

describe("without --auth-token the client API is open", () => {
  test("every route answers without an Authorization header", async () => {
    const { call } = handlerWith({});
    expect((await call("PUT", "/kv/a", {}, "v")).status).toBe(200);
    expect((await call("GET", "/kv/a")).status).toBe(200);
    expect((await call("GET", "/status")).status).toBe(200);
    expect((await call("GET", "/metrics")).status).toBe(200);
    expect((await call("GET", "/health")).status).toBe(200);
  });
});

describe("routing does not depend on the Host header", () => {
  test("a one-letter Host reaches the same routes (Elysia finds the path from index 11 of the URL)", async () => {
    const { handler } = handlerWith({});
    expect((await handler.handle(new Request("http://x/kv/a", { method: "PUT", body: "v" }))).status).toBe(200);
    const got = await handler.handle(new Request("http://x/kv/a?consistency=stale"));
    expect(await got.text()).toBe("v");
    expect((await handler.handle(new Request("http://ab/health"))).status).toBe(200);
    const missing = await handler.handle(new Request("http://x/kv/none"));
    expect(((await missing.json()) as { message: string }).message).toBe("no value is stored under this key");
  });
});

describe("with an auth token", () => {
  test("a request without the token, with a wrong one, or not as Bearer, is a 401 and never reaches the node", async () => {
    const { node, call } = handlerWith({ authToken: TOKEN });
    expect(await expectUnauthenticated(await call("PUT", "/kv/a", {}, "v"))).toContain("requires a bearer token");
    // Where a follower's redirect took it, curl -L dropped the header: said so (found in a black-box walkthrough).
    expect(await expectUnauthenticated(await call("PUT", "/kv/a", {}, "v"))).toContain("--location-trusted");
    expect(await expectUnauthenticated(await call("PUT", "/kv/a", { authorization: "Bearer wrong-token-0123456789" }, "v"))).toContain("wrong");
    expect(await expectUnauthenticated(await call("PUT", "/kv/a", { authorization: `Basic ${btoa(`u:${TOKEN}`)}` }, "v"))).toContain("Bearer");
    expect(await expectUnauthenticated(await call("PUT", "/kv/a", { authorization: `Bearer ${TOKEN}x` }, "v"))).toContain("wrong");
    expect(await expectUnauthenticated(await call("DELETE", "/kv/a"))).toBeString();
    expect(await expectUnauthenticated(await call("POST", "/leader/transfer"))).toBeString();
    expect(node.readConsistencies).toEqual([]);
    expect((await call("GET", "/kv/a", bearer)).status).toBe(404); // nothing was written by the refused PUTs
  });

  test("refused requests are said in the log, by kind and address, the first of a kind at once and then at most one line an interval (found in a black-box review: nothing was logged at any level)", async () => {
    const lines: string[] = [];
    const { call } = handlerWith({ authToken: TOKEN, logRefusal: (line) => lines.push(line), clientAddress: () => "192.0.2.7" });
    await call("GET", "/kv/a");
    await call("GET", "/kv/b");
    await call("PUT", "/kv/a", { authorization: "Bearer wrong-token-0123456789" }, "v");
    await call("GET", "/kv/a", bearer);
    expect(lines).toEqual([
      "refused a client request from 192.0.2.7: no bearer token (GET /kv/a)",
      "refused a client request from 192.0.2.7: a wrong bearer token (PUT /kv/a)",
    ]);
    expect(lines.join("\n")).not.toContain(TOKEN);
  });

  test("the right token passes, in any case of the scheme name", async () => {
    const { call } = handlerWith({ authToken: TOKEN });
    expect((await call("PUT", "/kv/a", bearer, "v")).status).toBe(200);
    const got = await call("GET", "/kv/a", { authorization: `bearer ${TOKEN}` });
    expect(got.status).toBe(200);
    expect(await got.text()).toBe("v");
  });

  test("unknown routes and wrong methods are 401 before they are 404 or 405: routes cannot be probed without the token", async () => {
    const { call } = handlerWith({ authToken: TOKEN });
    await expectUnauthenticated(await call("GET", "/nope"));
    await expectUnauthenticated(await call("PATCH", "/kv/a"));
    expect((await call("GET", "/nope", bearer)).status).toBe(404);
    expect((await call("PATCH", "/kv/a", bearer)).status).toBe(405);
  });

  test("/health is always open; /status and /metrics need the token unless metricsOpen", async () => {
    const closed = handlerWith({ authToken: TOKEN });
    expect((await closed.call("GET", "/health")).status).toBe(200);
    expect((await closed.call("GET", "/health", { authorization: "Bearer wrong" })).status).toBe(200);
    await expectUnauthenticated(await closed.call("GET", "/status"));
    await expectUnauthenticated(await closed.call("GET", "/metrics"));
    expect((await closed.call("GET", "/status", bearer)).status).toBe(200);
    expect((await closed.call("GET", "/metrics", bearer)).status).toBe(200);

    const open = handlerWith({ authToken: TOKEN, metricsOpen: true });
    expect((await open.call("GET", "/status")).status).toBe(200);
    expect((await open.call("GET", "/metrics")).status).toBe(200);
    expect((await open.call("HEAD", "/metrics")).status).toBe(200);
    await expectUnauthenticated(await open.call("GET", "/kv/a"));
    await expectUnauthenticated(await open.call("POST", "/leader/transfer"));
  });

  test("a refused request that carries a body closes the connection instead of draining the body", async () => {
    const { handler } = handlerWith({ authToken: TOKEN });
    const response = await handler.handle(
      new Request(`${ORIGIN}/kv/a`, { method: "PUT", body: "v".repeat(100), headers: { "content-length": "100" } }),
    );
    await expectUnauthenticated(response);
    expect(response.headers.get("connection")).toBe("close");
  });
});

describe("a real node started with --auth-token", () => {
  const baseDir = mkdtempSync(join(tmpdir(), "kv-security-client-"));
  afterEach(() => killAllKvProcesses());
  afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

  test("an empty $KV_AUTH_TOKEN or $KV_CLUSTER_TOKEN reads as unset, and is said at start (noted in earlier sessions: the node served without the token its operator meant, silently)", async () => {
    const node = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir: join(baseDir, "empty-token"),
      logFile: join(baseDir, "empty-token.log"),
      env: { KV_AUTH_TOKEN: "", KV_CLUSTER_TOKEN: "" },
    });
    expect(await node.waitForLog("$KV_AUTH_TOKEN is set but empty")).toContain("read as unset, so this node requires no client token");
    expect(await node.waitForLog("$KV_CLUSTER_TOKEN is set but empty")).toContain("requires no cluster token");
    expect((await fetch(`${node.httpUrl}/status`)).status).toBe(200);
    await node.stop();
  });

  test("enforces the token over the network, with /status and /metrics open under --metrics-open; the token may come from KV_AUTH_TOKEN", async () => {
    const closed = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir: join(baseDir, "closed"),
      logFile: join(baseDir, "closed.log"),
      env: { KV_AUTH_TOKEN: TOKEN },
    });
    const open = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir: join(baseDir, "open"),
      logFile: join(baseDir, "open.log"),
      args: ["--auth-token", TOKEN, "--metrics-open"],
    });
    try {
      expect(await closed.waitForLog('"event":"started"')).toContain('"clientAuth":"bearer-token"');
      await expectUnauthenticated(await fetch(`${closed.httpUrl}/status`));
      await expectUnauthenticated(await fetch(`${closed.httpUrl}/metrics`));
      await expectUnauthenticated(await fetch(`${closed.httpUrl}/kv/a`, { method: "PUT", body: "v" }));
      expect((await fetch(`${closed.httpUrl}/status`, { headers: bearer })).status).toBe(200);
      // The node's log names the refusal and where it came from.
      expect(await closed.waitForLog('"event":"client refused"')).toContain("refused a client request from 127.0.0.1: no bearer token (GET /status)");

      expect((await fetch(`${open.httpUrl}/status`)).status).toBe(200);
      const metricsText = await (await fetch(`${open.httpUrl}/metrics`)).text();
      expect(metricsText).toContain("kv_raft_term ");
      await expectUnauthenticated(await fetch(`${open.httpUrl}/kv/a`));
      // A single-node cluster elects itself; then a write with the token goes through.
      for (const node of [closed, open]) {
        await node.waitForLog('"role":"leader"');
        const put = await fetch(`${node.httpUrl}/kv/a`, { method: "PUT", body: "v", headers: bearer });
        expect(put.status).toBe(200);
        expect((await fetch(`${node.httpUrl}/health`)).status).toBe(200);
      }
    } finally {
      await closed.stop();
      await open.stop();
    }
  }, 60_000);
});

describe("the client library and kv snapshot save follow a 307 only to http(s), never from https to http (found in a security review: a Location of file:///... made get() answer a local file's bytes, and one to http:// sent the token in clear)", () => {
  const servers: { stop(force?: boolean): unknown }[] = [];
  afterEach(() => {
    for (const server of servers.splice(0)) server.stop(true);
  });
  /** A server on a port the OS picks that records each request's Authorization and answers `answer`. */
  const recorder = (answer: (request: Request) => Response, tls?: { cert: string; key: string }) => {
    const seen: (string | null)[] = [];
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      ...(tls === undefined ? {} : { tls }),
      fetch(request) {
        seen.push(request.headers.get("authorization"));
        return answer(request);
      },
    });
    servers.push(server);
    return { seen, port: server.port };
  };
  const redirectTo = (location: (request: Request) => string) => (request: Request) =>
    new Response('{"error":"not_leader","message":"another node leads"}', { status: 307, headers: { location: location(request), "content-type": "application/json" } });

  test("a Location of file:///... is not followed: get() is refused, never answered with the file", async () => {
    const { createClient } = await import("../src/client/index.ts");
    const dir = mkdtempSync(join(tmpdir(), "kv-redirect-file-"));
    const file = join(dir, "secret.txt");
    await Bun.write(file, "LOCAL-FILE-CONTENTS");
    const follower = recorder(redirectTo(() => `file://${file}`));
    const client = createClient({ endpoints: [`http://127.0.0.1:${follower.port}`], timeoutMs: 1_000 });
    const got = await client.get("k").then(
      (value) => ({ value: value?.text }),
      (error: unknown) => ({ error: error as { code: string; message: string } }),
    );
    expect(got).toMatchObject({ error: { code: "too_many_redirects" } });
    expect("error" in got ? got.error.message : "").toContain("not followed (only http and https)");
    rmSync(dir, { recursive: true, force: true });
  });

  test("a Location holding a user or password is not followed", async () => {
    const { createClient } = await import("../src/client/index.ts");
    const leader = recorder(() => new Response('{"key":"k","version":3}'));
    const follower = recorder(redirectTo((request) => `http://u:p@127.0.0.1:${leader.port}${new URL(request.url).pathname}`));
    const client = createClient({ endpoints: [`http://127.0.0.1:${follower.port}`], authToken: TOKEN, timeoutMs: 1_000 });
    expect(await client.put("k", "v").then(() => "written", (error: unknown) => (error as { code: string }).code)).toBe("too_many_redirects");
    expect(leader.seen).toEqual([]);
  });

  test("from an https endpoint to plain http: the client and kv snapshot save send nothing there", async () => {
    const { createClient } = await import("../src/client/index.ts");
    const { makeTestCertificates } = await import("./helpers/certs.ts");
    const { readFileSync } = await import("node:fs");
    const { runKvCommand } = await import("./helpers/kv-binary.ts");
    const dir = mkdtempSync(join(tmpdir(), "kv-redirect-tls-"));
    const certs = makeTestCertificates(dir);
    const plain = recorder(() => new Response('{"key":"k","version":3}'));
    const follower = recorder(
      redirectTo((request) => `http://127.0.0.1:${plain.port}${new URL(request.url).pathname}`),
      { cert: readFileSync(certs.nodeCert, "utf8"), key: readFileSync(certs.nodeKey, "utf8") },
    );
    const endpoint = `https://127.0.0.1:${follower.port}`;
    const client = createClient({ endpoints: [endpoint], authToken: TOKEN, timeoutMs: 1_000, ca: readFileSync(certs.caCert, "utf8") });
    const refused = await client.put("k", "v").then(() => undefined, (error: unknown) => error as { code: string; message: string });
    expect(refused?.code).toBe("too_many_redirects");
    expect(refused?.message).toContain("from https to plain http");
    const saved = await runKvCommand(["snapshot", "save", join(dir, "b.kvbak"), "--endpoints", endpoint, "--cacert", certs.caCert, "--auth-token", TOKEN, "--timeout-ms", "1000"]);
    expect(saved.code).not.toBe(0);
    expect(saved.err).toContain("from https to plain http");
    expect(plain.seen).toEqual([]);
    expect(follower.seen.length).toBeGreaterThan(1);
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);
});
