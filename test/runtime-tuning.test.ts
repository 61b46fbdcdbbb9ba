// Proves that a long-running command re-executes itself in place with the runtime's settings
// (src/cli/runtime-tuning.ts): the very process that was spawned (same pid, answering signals) runs
// with every variable of RUNTIME_TUNING, and an operator's own value is left alone.
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BUN_FLAGS, bunOptionsWithFlags, RUNTIME_TUNING } from "../src/cli/runtime-tuning.ts";
import { killAllKvProcesses, startKvProcess } from "./helpers/kv-process.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-runtime-tuning-"));
afterAll(async () => {
  await killAllKvProcesses();
  rmSync(baseDir, { recursive: true, force: true });
});
// The spawned nodes inherit this process's environment: start from one without the variables.
for (const name of [...Object.keys(RUNTIME_TUNING), "BUN_OPTIONS"]) delete process.env[name];

/** The environment of a running process, from /proc. */
function environmentOf(pid: number): Map<string, string> {
  const entries = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter((entry) => entry.includes("="));
  return new Map(entries.map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
}

describe.skipIf(process.platform !== "linux")("runtime tuning", () => {
  test("kv serve runs with the tuned settings in the process that was spawned, and stops on SIGTERM", async () => {
    const node = await startKvProcess({ id: 1, cluster: "1=http://127.0.0.1:0", dataDir: join(baseDir, "default"), logFile: join(baseDir, "default.log") });
    try {
      const environment = environmentOf(node.pid);
      for (const [name, value] of Object.entries(RUNTIME_TUNING)) expect(environment.get(name)).toBe(value);
      expect(environment.get("BUN_OPTIONS")).toBe(BUN_FLAGS.join(" "));
      expect(readFileSync(`/proc/${node.pid}/cmdline`, "utf8").split("\0")).toContain("serve");
      const status = (await (await fetch(`${node.httpUrl}/status`)).json()) as { id: number };
      expect(status.id).toBe(1);
      expect(await node.terminate()).toBe(0);
    } finally {
      await node.stop();
    }
  });

  test("an operator's own value is kept, and the other settings still applied", async () => {
    const node = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir: join(baseDir, "operator"),
      logFile: join(baseDir, "operator.log"),
      env: { MIMALLOC_PURGE_DELAY: "250", BUN_OPTIONS: "--max-http-header-size=20000 --smol" },
    });
    try {
      const environment = environmentOf(node.pid);
      expect(environment.get("MIMALLOC_PURGE_DELAY")).toBe("250");
      expect(environment.get("BUN_JSC_useFTLJIT")).toBe("0");
      expect(environment.get("BUN_OPTIONS")).toBe("--max-http-header-size=20000 --smol");
    } finally {
      await node.stop();
    }
  });

  test("keys as long as the limits allow reach their routes, percent-encoded, and a longer one gets the JSON 413", async () => {
    const node = await startKvProcess({
      id: 1,
      cluster: "1=http://127.0.0.1:0",
      dataDir: join(baseDir, "long-keys"),
      logFile: join(baseDir, "long-keys.log"),
      args: ["--key-bytes-max", "16384"],
    });
    try {
      // 8,192 two-byte characters: 16,384 bytes, 49,152 characters in the URL (Bun's own limit was 16 KiB).
      const key = "é".repeat(8192);
      const path = `${node.httpUrl}/kv/${encodeURIComponent(key)}`;
      const put = await fetch(path, { method: "PUT", body: "long" });
      expect(put.status).toBe(200);
      const got = await fetch(path);
      expect(got.status).toBe(200);
      expect(await got.text()).toBe("long");
      // A listing's next page names two such keys in its query.
      const prefix = "é".repeat(8000);
      const listed = await fetch(`${node.httpUrl}/kv?prefix=${encodeURIComponent(prefix)}&after=${encodeURIComponent(prefix)}`);
      expect(listed.status).toBe(200);
      expect(((await listed.json()) as { items: { key: string }[] }).items.map((item) => item.key)).toEqual([key]);
      const over = await fetch(`${node.httpUrl}/kv/${"k".repeat(16385)}`, { method: "PUT", body: "x" });
      expect(over.status).toBe(413);
      expect(((await over.json()) as { error: string }).error).toBe("too_large");
    } finally {
      await node.stop();
    }
  });
});

describe("BUN_OPTIONS", () => {
  test("the flags are added to an operator's own, and a flag the operator set is left as it is", () => {
    expect(bunOptionsWithFlags(undefined)).toBe(BUN_FLAGS.join(" "));
    expect(bunOptionsWithFlags("--smol")).toBe(["--smol", ...BUN_FLAGS].join(" "));
    expect(bunOptionsWithFlags("--max-http-header-size=20000")).toBeUndefined();
    expect(bunOptionsWithFlags(BUN_FLAGS.join(" "))).toBeUndefined();
    expect(bunOptionsWithFlags("--title='a  b'\t--smol")).toBe(`--title='a  b'\t--smol ${BUN_FLAGS.join(" ")}`);
  });
});
