// Proves /openapi.json describes exactly the routes the app serves: every route is in the document,
// every documented method is served (not 404/405), and every undocumented method is refused with 405.
import { expect, test } from "bun:test";
import { createHttpApp } from "../src/http/app.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { openApiDocument } from "../src/http/openapi.ts";

const app = createHttpApp(new MemoryKvNode(), { renderMetrics: () => "kv_up 1\n" });
const documented = openApiDocument.paths as Record<string, Record<string, unknown>>;
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

test("every route the app registers is documented", () => {
  const served = new Set((app.routes as { path: string }[]).map((r) => r.path));
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
