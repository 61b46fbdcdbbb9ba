// Proves /openapi.json, generated from the routes' schemas, describes exactly the routes the app serves: every route is in the document, every documented method is served (not 404/405), every undocumented method is refused with 405, its info.version is the release's, and what Elysia validates (query, path parameters, headers) is what the document lists.
import { expect, test } from "bun:test";
import { createHttpApp } from "../src/http/app.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import packageJson from "../package.json" with { type: "json" };

const app = createHttpApp(new MemoryKvNode(), { renderMetrics: () => "kv_up 1\n" });
interface Operation {
  parameters?: { name: string; in: string; schema?: unknown }[];
  requestBody?: unknown;
}
const openApiDocument = (await (await app.handle(new Request("http://localhost/openapi.json"))).json()) as {
  paths: Record<string, Record<string, Operation>>;
  components: { schemas: Record<string, unknown> };
};
const documented = openApiDocument.paths;
const methods = ["get", "put", "post", "delete", "patch"] as const;

/** "/members/:id" → "/members/{id}" */
function toTemplate(path: string): string {
  return path.replace(/:([A-Za-z]+)/g, "{$1}");
}

/** A concrete URL for a templated path. */
function concrete(path: string): string {
  return path.replace("{key}", "some%2Fkey").replace(/\{[A-Za-z]+\}/g, "2");
}

test("GET /openapi.json serves the document", async () => {
  const response = await app.handle(new Request("http://localhost/openapi.json"));
  expect(response.status).toBe(200);
  expect(((await response.json()) as { openapi: string }).openapi).toBe("3.1.0");
});

test("the document's info.version is the release version, the one kv --version prints", async () => {
  const response = await app.handle(new Request("http://localhost/openapi.json"));
  const { info } = (await response.json()) as { info: { version: string } };
  expect(packageJson.version).toMatch(/^\d+\.\d+\.\d+/);
  expect(info.version).toBe(packageJson.version);
});

test("every route the app registers is documented", () => {
  const served = new Set((app.routes as { path: string; method: string }[]).filter((r) => r.method !== "HEAD").map((r) => r.path));
  const missing = [...served].filter((path) => {
    if (path.endsWith("/*")) return !Object.keys(documented).some((doc) => doc.startsWith(`${path.slice(0, -1)}{`));
    return !(toTemplate(path) in documented);
  });
  expect(missing).toEqual([]);
});

test("every documented method is served, every other method is a 405", async () => {
  const wrong: string[] = [];
  for (const [path, operations] of Object.entries(documented)) {
    for (const method of methods) {
      const body = method === "put" || method === "post" || method === "patch" ? "{}" : undefined;
      const response = await app.handle(new Request(`http://localhost${concrete(path)}`, { method: method.toUpperCase(), body }));
      const isDocumented = method in operations;
      if (isDocumented && (response.status === 405 || (response.status === 404 && ((await response.json()) as { message: string }).message.startsWith("no route")))) {
        wrong.push(`${method.toUpperCase()} ${path}: documented but answers ${response.status}`);
      }
      if (!isDocumented && response.status !== 405) wrong.push(`${method.toUpperCase()} ${path}: not documented but answers ${response.status}`);
    }
  }
  expect(wrong).toEqual([]);
});

test("every route of the client API is there, /watch, /leases, /txn and /snapshot included, with its parameters and bodies", () => {
  const operations = Object.entries(documented).flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method.toUpperCase()} ${path}`));
  expect(operations.sort()).toEqual(
    [
      "GET /kv/{key}",
      "PUT /kv/{key}",
      "DELETE /kv",
      "DELETE /kv/{key}",
      "GET /kv",
      "GET /status",
      "GET /health",
      "GET /metrics",
      "POST /leader/transfer",
      "GET /watch",
      "POST /txn",
      "GET /openapi.json",
      "GET /members",
      "POST /members",
      "DELETE /members/{id}",
      "POST /members/{id}/promote",
      "GET /snapshot",
      "GET /hash",
      "POST /leases",
      "GET /leases",
      "GET /leases/{id}",
      "DELETE /leases/{id}",
      "POST /leases/{id}/keepalive",
    ].sort(),
  );
  const names = (path: string, method: string) => (documented[path]?.[method]?.parameters ?? []).map((p) => `${p.in}:${p.name}`).sort();
  expect(names("/kv/{key}", "put")).toEqual(["header:Idempotency-Key", "path:key", "query:ifVersion", "query:lease"]);
  expect(names("/kv", "get")).toEqual(["query:after", "query:consistency", "query:limit", "query:prefix"]);
  expect(names("/kv", "delete")).toEqual(["header:idempotency-key", "query:limit", "query:prefix"]);
  expect(names("/watch", "get")).toEqual(["header:last-event-id", "query:fromVersion", "query:key", "query:prefix"]);
  expect(names("/leases/{id}/keepalive", "post")).toEqual(["path:id"]);
  expect(names("/leases", "get")).toEqual(["query:after", "query:limit"]);
  expect(names("/txn", "post")).toEqual(["header:idempotency-key"]);
  expect(names("/hash", "get")).toEqual(["query:consistency"]);
  for (const [path, method] of [["/txn", "post"], ["/leases", "post"], ["/members", "post"], ["/kv/{key}", "put"]] as const) {
    expect([path, documented[path]?.[method]?.requestBody !== undefined]).toEqual([path, true]);
  }
  expect(Object.keys(openApiDocument.components.schemas)).toEqual(expect.arrayContaining(["Error", "TxnRequest", "TxnAnswer"]));
});

test("a query parameter the document does not list is refused by the schema with a JSON 400, as is a value outside it", async () => {
  for (const url of ["/kv?nope=1", "/kv?limit=0", "/kv?consistency=eventual", "/watch?prefix=a&since=3", "/watch?prefix=a&fromVersion=-1", "/leader/transfer?to=x", "/txn?x=1"]) {
    const method = url.startsWith("/leader") || url.startsWith("/txn") ? "POST" : "GET";
    const response = await app.handle(new Request(`http://localhost${url}`, { method, ...(method === "POST" ? { body: "{}" } : {}) }));
    const body = (await response.json()) as { error: string; message: string };
    expect([url, response.status, body.error, typeof body.message]).toEqual([url, 400, "bad_request", "string"]);
  }
});

test("the members answer's schema says what GET /members answers for a client URL or an index not known: null", () => {
  type Schema = { type?: string; anyOf?: Schema[]; properties?: Record<string, Schema>; items?: Schema };
  const response = (documented["/members"]?.get as { responses?: Record<string, { content?: Record<string, { schema?: Schema }> }> }).responses?.["200"];
  const member = response?.content?.["application/json"]?.schema?.properties?.members?.items;
  for (const field of ["httpUrl", "addedIndex", "role"]) {
    expect([field, member?.properties?.[field]?.anyOf?.some((option) => option.type === "null")]).toEqual([field, true]);
  }
});

test("what a route answers to a body it does not take (413 past 4 KiB), or to a key past the read limit, is among its documented answers (found in a black-box review: left out of DELETE /kv/{key}, the lease and member routes, and GET /kv/{key})", async () => {
  const responses = (path: string, method: string) => Object.keys((documented[path]?.[method] as { responses?: Record<string, unknown> } | undefined)?.responses ?? {});
  const missing: string[] = [];
  for (const [path, operations] of Object.entries(documented)) {
    for (const method of methods) {
      const operation = operations[method];
      if (operation === undefined || method === "get" || operation.requestBody !== undefined) continue;
      const answer = await app.handle(new Request(`http://localhost${concrete(path)}`, { method: method.toUpperCase(), body: "x".repeat(5_000) }));
      if (answer.status !== 200 && !responses(path, method).includes(String(answer.status))) missing.push(`${method} ${path}: ${answer.status}`);
    }
  }
  const longKey = await app.handle(new Request(`http://localhost/kv/${"k".repeat(20_000)}`));
  if (!responses("/kv/{key}", "get").includes(String(longKey.status))) missing.push(`get /kv/{key}: ${longKey.status}`);
  expect(missing).toEqual([]);
  expect(responses("/leader/transfer", "post")).toContain("409");
});
