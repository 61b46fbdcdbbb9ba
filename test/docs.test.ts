// Proves the reference in docs/ has not drifted from the code: every route and method the server serves (its /openapi.json and its registered routes), every error code it answers, every header it reads or sets, every `kv serve` flag, every metric name and every `kv chaos` scenario appears in the document that owns it, and every relative link and anchor in the docs resolves.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chaosCommand } from "../src/cli/chaos.ts";
import { serveCommand } from "../src/cli/serve.ts";
import { createHttpApp } from "../src/http/app.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";

const root = join(import.meta.dir, "..");
const read = (path: string): string => readFileSync(join(root, path), "utf8");
const apiDoc = read("docs/api.md");
const operationsDoc = read("docs/operations.md");
const chaosDoc = read("docs/chaos.md");

/** Every TypeScript file under `dir`, recursively. */
function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return path.endsWith(".ts") ? [path] : [];
  });
}

/** Whole matches of `pattern` (group 1) in `text`, deduplicated. */
function matches(text: string, pattern: RegExp): string[] {
  return [...new Set([...text.matchAll(pattern)].map((match) => match[1] as string))];
}

describe("docs/api.md", () => {
  const app = createHttpApp(new MemoryKvNode(), { renderMetrics: () => "" });

  test("names every route and method the app's /openapi.json lists, as `METHOD /path`", async () => {
    const response = await app.handle(new Request("http://localhost/openapi.json"));
    expect(response.status).toBe(200);
    const { paths } = (await response.json()) as { paths: Record<string, Record<string, unknown>> };
    const operations = Object.entries(paths).flatMap(([path, methods]) =>
      Object.keys(methods)
        .filter((method) => ["get", "put", "post", "delete", "patch"].includes(method))
        .map((method) => `${method.toUpperCase()} ${path.replace(/:([A-Za-z]+)/g, "{$1}")}`),
    );
    expect(operations.length).toBeGreaterThan(10);
    expect(operations.filter((operation) => !apiDoc.includes(operation))).toEqual([]);
  });

  test("names every path the app registers", () => {
    const registered = (app.routes as { path: string }[]).map((route) => route.path.replace(/\/\*$/, "/").replace(/:([A-Za-z]+)/g, "{$1}"));
    expect(registered.filter((path) => !apiDoc.includes(`${path}`))).toEqual([]);
  });

  test("lists every error code (KvError's, and those answered outside it) in its table with the HTTP status", () => {
    const kvErrorTypes = read("src/lib/kv-error.ts");
    const union = /export type KvErrorCode =([\s\S]*?)\nexport /.exec(kvErrorTypes)?.[1] ?? "";
    const kvCodes = matches(union.replace(/\/\/.*$/gm, ""), /\| *"([a-z_]+)"/g);
    expect(kvCodes).toContain("not_leader");
    const httpSources = sourceFiles(join(root, "src/http")).concat(sourceFiles(join(root, "src/node")), sourceFiles(join(root, "src/server")));
    const otherCodes = httpSources.flatMap((file) => matches(readFileSync(file, "utf8"), /\berror: "([a-z_]+)"/g).concat(matches(readFileSync(file, "utf8"), /\bbody\("([a-z_]+)"/g)));
    const codes = [...new Set([...kvCodes, ...otherCodes])];
    // A table row of the error table: | status | `code` | ...
    const rows = apiDoc.split("\n").filter((line) => /^\| *[0-9]{3}/.test(line));
    expect(codes.filter((code) => !rows.some((row) => row.includes(`\`${code}\``)))).toEqual([]);
  });

  test("names every header the client API reads or sets", () => {
    const httpSources = sourceFiles(join(root, "src/http"));
    const found = httpSources.flatMap((file) => {
      const text = readFileSync(file, "utf8");
      return matches(text, /headers\.get\("([A-Za-z-]+)"\)/g).concat(matches(text, /"(x-[a-z-]+)"/g), matches(text, /"(retry-after|location|allow|www-authenticate|content-disposition)"/g));
    });
    const headers = [...new Set([...found.map((name) => name.toLowerCase()), "location", "retry-after", "allow", "authorization"])];
    // Written as code, e.g. `Retry-After` or `Last-Event-ID: N`.
    expect(headers.filter((header) => !new RegExp(`\`${header}[\`:]`, "i").test(apiDoc))).toEqual([]);
  });
});

describe("docs/operations.md", () => {
  let cluster: ServerCluster | undefined;
  let baseDir = "";
  beforeAll(() => {
    baseDir = mkdtempSync(join(tmpdir(), "kv-docs-test-"));
  });
  afterAll(async () => {
    await cluster?.stop();
    rmSync(baseDir, { recursive: true, force: true });
  });

  test("has a table row for every `kv serve` flag", () => {
    const args = serveCommand.args as Record<string, unknown>;
    const flags = Object.keys(args).map((name) => `--${name}`);
    expect(flags).toContain("--cluster");
    const rows = operationsDoc.split("\n").filter((line) => line.startsWith("|"));
    expect(flags.filter((flag) => !rows.some((row) => row.includes(`\`${flag}\``) || row.includes(`\`${flag} `)))).toEqual([]);
  });

  test("names every metric: those declared in src/ and those a live node exposes", async () => {
    const declared = sourceFiles(join(root, "src"))
      .filter((file) => !file.includes(`${join("src", "gen")}`))
      .flatMap((file) => matches(readFileSync(file, "utf8"), /"(kv_[a-z0-9_]+)"/g));
    expect(declared).toContain("kv_raft_term");
    // A one-node server in this process (OS-picked ports), with the connection cap on so its metrics render too.
    cluster = createServerCluster({ size: 1, baseDir, config: () => ({ metricsOpen: true, clientConnectionsMax: 64 }) });
    await cluster.start();
    const text = await (await fetch(`http://127.0.0.1:${cluster.node(1).httpPort}/metrics`)).text();
    const exposed = matches(text, /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) /gm);
    expect(exposed).toContain("kv_http_connections");
    const names = [...new Set([...declared, ...exposed])];
    expect(names.filter((name) => !new RegExp(`\\b${name}\\b`).test(operationsDoc))).toEqual([]);
  });
});

describe("docs/chaos.md", () => {
  test("describes every `kv chaos` scenario", () => {
    const scenarios = Object.keys(chaosCommand.subCommands as Record<string, unknown>);
    expect(scenarios).toContain("random");
    expect(scenarios.filter((name) => !chaosDoc.includes(`kv chaos ${name}`))).toEqual([]);
  });
});

describe("README.md", () => {
  test("points to every document under docs/", () => {
    const readme = read("README.md");
    const documents = readdirSync(join(root, "docs")).filter((name) => name.endsWith(".md"));
    expect(documents.length).toBeGreaterThanOrEqual(4);
    expect(documents.filter((name) => !readme.includes(`docs/${name}`))).toEqual([]);
  });
});

describe("links", () => {
  /** GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens. */
  const slug = (heading: string): string =>
    heading
      .trim()
      .toLowerCase()
      .replace(/[^a-z0-9 _-]/g, "")
      .replace(/ /g, "-");
  const anchorsOf = (text: string): Set<string> =>
    new Set(text.split("\n").flatMap((line) => (/^#{1,6} /.test(line) ? [slug(line.replace(/^#+ /, ""))] : [])));
  test("every relative link in README.md, BENCHMARKS.md and docs/ names a file that exists, and a heading in it", () => {
    const files = ["README.md", "BENCHMARKS.md", ...readdirSync(join(root, "docs")).filter((name) => name.endsWith(".md")).map((name) => `docs/${name}`)];
    const broken: string[] = [];
    for (const file of files) {
      const text = read(file);
      const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (target === undefined || /^[a-z]+:/.test(target)) continue;
        const [pathPart, anchor] = target.split("#") as [string, string | undefined];
        const path = pathPart === "" ? file : join(dir, pathPart).replace(/\\/g, "/");
        let linked: string;
        try {
          linked = read(path);
        } catch {
          broken.push(`${file}: ${target} (no such file)`);
          continue;
        }
        if (anchor !== undefined && path.endsWith(".md") && !anchorsOf(linked).has(anchor)) broken.push(`${file}: ${target} (no such heading)`);
      }
    }
    expect(broken).toEqual([]);
  });
});
