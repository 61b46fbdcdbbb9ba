// Proves a node answers an oversized PUT (2 MiB against the default 1 MiB --value-bytes-max) with 413 `too_large` and its JSON body to clients that send the whole body before reading the answer — Node's fetch, Bun's fetch, Python's http.client and curl without `Expect: 100-continue` — with a declared Content-Length and chunked, instead of breaking the connection under them. The node runs in-process (createServer with kv serve's defaults); the clients are processes of their own.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServerCluster } from "./helpers/server-cluster.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-too-large-"));
const BODY_BYTES = 2 << 20;
/** Each client tries this often: a broken connection was intermittent (one attempt in three often got through). */
const ATTEMPTS = 3;
const cluster = createServerCluster({ size: 1, baseDir });
let url: string;

beforeAll(async () => {
  await cluster.start();
  await cluster.waitForLeader();
  url = `${cluster.node(1).httpUrl}/kv/k`;
});
afterAll(async () => {
  await cluster.stop();
  rmSync(baseDir, { recursive: true, force: true });
});

/** What one client saw: the status and body text, or the error it failed with. */
interface Seen {
  readonly status?: number;
  readonly body?: string;
  readonly error?: string;
}

function expectTooLarge(seen: Seen): void {
  expect(seen).toMatchObject({ status: 413 });
  const body = JSON.parse(seen.body ?? "") as { error: string; message: string };
  expect(body.error).toBe("too_large");
  expect(body.message).toContain("1048576");
}

/** Runs a child process to completion (killed by pid if it outlives 30 s) and parses the one JSON line it prints. */
async function runClient(argv: string[]): Promise<Seen> {
  const proc = Bun.spawn(argv, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  try {
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    const code = await proc.exited;
    const line = out.trim().split("\n").at(-1) ?? "";
    if (!line.startsWith("{")) return { error: `exit ${code}: ${out}${err}` };
    return JSON.parse(line) as Seen;
  } finally {
    clearTimeout(timer);
    if (proc.exitCode === null) proc.kill("SIGKILL");
  }
}

/** A fetch client script for Node or Bun: PUTs 2 MiB, declared (`length`) or chunked, and prints what it saw. */
function fetchScript(mode: "length" | "chunked"): string {
  return `
const size = ${BODY_BYTES};
const init = { method: "PUT", body: new Uint8Array(size) };
if (${JSON.stringify(mode)} === "chunked") {
  init.body = new ReadableStream({ start(c) { for (let i = 0; i < size / 65536; i++) c.enqueue(new Uint8Array(65536)); c.close(); } });
  init.duplex = "half";
}
try {
  const response = await fetch(process.argv.at(-1), init);
  console.log(JSON.stringify({ status: response.status, body: await response.text() }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error) + " " + String(error.cause?.code ?? error.cause ?? "") }));
}`;
}

const PYTHON_SCRIPT = `
import http.client, json, sys
url, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
host, port = url.split("/")[2].split(":")
connection = http.client.HTTPConnection(host, int(port), timeout=20)
try:
    if mode == "chunked":
        def chunks():
            for _ in range(size // 65536):
                yield b"\\0" * 65536
        connection.request("PUT", "/kv/k", body=chunks(), encode_chunked=True)
    else:
        connection.request("PUT", "/kv/k", body=b"\\0" * size)
    response = connection.getresponse()
    print(json.dumps({"status": response.status, "body": response.read().decode()}))
except Exception as error:
    print(json.dumps({"error": type(error).__name__ + ": " + str(error)}))
`;

for (const runtime of ["node", "bun"] as const) {
  for (const mode of ["length", "chunked"] as const) {
    test(`${runtime}'s fetch, body ${mode === "length" ? "with Content-Length" : "chunked"}: 413 too_large with its JSON body`, async () => {
      const script = join(baseDir, `client-${runtime}-${mode}.mjs`);
      writeFileSync(script, fetchScript(mode));
      for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
        expectTooLarge(await runClient([runtime === "node" ? "node" : process.execPath, script, url]));
      }
    }, 60_000);
  }
}

for (const mode of ["length", "chunked"] as const) {
  test(`python's http.client, body ${mode === "length" ? "with Content-Length" : "chunked"}: 413 too_large with its JSON body`, async () => {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      expectTooLarge(await runClient(["python3", "-c", PYTHON_SCRIPT, url, mode, String(BODY_BYTES)]));
    }
  }, 60_000);
}

test("curl, with and without Expect: 100-continue: 413 too_large with its JSON body", async () => {
  const file = join(baseDir, "body.bin");
  writeFileSync(file, new Uint8Array(BODY_BYTES));
  for (const expectHeader of [[], ["-H", "Expect:"]]) {
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      // Spawned without blocking: the node answers from this very process.
      const proc = Bun.spawn(["curl", "-sS", "-X", "PUT", ...expectHeader, "--data-binary", `@${file}`, "-w", "\n%{http_code}", url], {
        stdout: "pipe",
        stderr: "pipe",
        stdin: "ignore",
        timeout: 30_000,
      });
      try {
        const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
        const [body = "", status = ""] = out.split("\n");
        expectTooLarge({ status: Number(status), body, ...(code === 0 ? {} : { error: err }) });
      } finally {
        if (proc.exitCode === null) process.kill(proc.pid, "SIGKILL");
      }
    }
  }
}, 60_000);

test("the node still serves ordinary requests afterwards", async () => {
  const put = await fetch(url, { method: "PUT", body: "small" });
  expect(put.status).toBe(200);
  expect(await (await fetch(url)).text()).toBe("small");
});
