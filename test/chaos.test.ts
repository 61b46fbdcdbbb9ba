// Proves `kv chaos failover`, `kv chaos election` and `kv chaos membership` run as a user runs them (the built executable)
// and pass: no acknowledged write lost across a leader SIGKILL, at most one node accepting per election, members replaced under writes.
import { expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runKv } from "./helpers/kv-binary.ts";

const run = runKv;

test("kv chaos failover: 100 acknowledged writes, leader killed mid-write, 0 missing, 0 wrong", async () => {
  const { code, out } = await run(["chaos", "failover"]);
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  expect(out).toContain("=== Chaos Test: Leader Failover During Writes ===");
  expect(out).toContain("Acknowledged 50 writes before crash");
  expect(out).toMatch(/New leader elected: Node \d/);
  const total = Number(/=== Results ===\nTotal acknowledged writes: (\d+)/.exec(out)?.[1]);
  expect(total).toBeGreaterThanOrEqual(100);
  expect(out).toContain("Missing keys: 0");
  expect(out).toContain("Wrong values: 0");
  expect(out).toContain("✅ SUCCESS: All acknowledged writes survived leader failover!");
});

test("kv chaos election: at most one node accepts a write per election, replicas agree", async () => {
  const { code, out } = await run(["chaos", "election", "--rounds", "3"]);
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  expect(out.match(/\[Round \d\]/g)?.length).toBe(3);
  expect(out).toContain("Rounds with more than one node accepting: 0");
  expect(out).toContain("✅ SUCCESS");
});

test("kv chaos with a bad flag is a usage error (exit 2) and starts nothing", async () => {
  const { code, out } = await run(["chaos", "failover", "--keys", "zero"]);
  expect(code).toBe(2);
  expect(out).toContain("--keys must be a whole number");
});

test("kv chaos membership: members replaced under writes (the leader among them) join empty, get an image, are promoted; nothing lost, replicas agree", async () => {
  const { code, out } = await run(["chaos", "membership", "--rounds", "2"]);
  if (code !== 0) console.error(out);
  expect(code).toBe(0);
  expect(out).toContain("=== Chaos Test: Members Replaced Under Load ===");
  expect(out.match(/Node \d joined empty and was promoted to voter/g)?.length).toBe(2);
  // The log is compacted every 100 entries there: each joiner got an image, and installed it.
  expect(out.match(/images installed: [1-9]\d*\)/g)?.length).toBe(2);
  expect(out).toMatch(/\[Step 3\.2\] Replacing node \d \(the leader\)/);
  expect(out).toContain("Members replaced: 2 (1 of them leading)");
  expect(out).toContain("Missing keys: 0");
  expect(out).toContain("Wrong values: 0");
  expect(out).toMatch(/Replica state hashes: 1 of 1 comparisons consistent; the last: consistent: 3 nodes hold sha256:[0-9a-f]{64}/);
  expect(out).toContain("✅ SUCCESS: 2 members were replaced in turn under writes");
});

test("kv chaos random whose linearizability check runs out of its budget says UNDECIDED and exits 3, not 1 as for an anomaly; its --json has the replicas' comparison and the kept data dir (found in a black-box review)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "kv-chaos-undecided-"));
  try {
    const json = join(dir, "result.json");
    // One search step per key: every key with more than one operation is left undecided, the same way each run.
    const { code, out } = await run(["chaos", "random", "--duration", "2s", "--seed", "5", "--bank-clients", "0", "--nemesis", "pause", "--check-steps", "1", "--json", json]);
    expect(code).toBe(3);
    expect(out).toMatch(/Linearizability: ⚠️ {2}undecided after \d+ ms: budget exceeded: the search took its 1 step \(key k\d\)/);
    expect(out).toContain("⚠️  UNDECIDED: no anomaly found");
    expect(out).not.toContain("FAILURE");
    expect(out).toContain("Replay this schedule: kv chaos random --seed 5 --duration 2s --bank-clients 0 --nemesis pause --check-steps 1");
    const result = JSON.parse(readFileSync(json, "utf8")) as { ok: boolean; result: { undecided?: boolean }; dataDir?: string; replicaChecks?: { verdict: string }[] };
    expect(result.ok).toBe(false);
    expect(result.result.undecided).toBe(true);
    // The JSON says what the text does: the replicas' comparison, and where the kept logs are.
    expect(result.replicaChecks?.[result.replicaChecks.length - 1]?.verdict).toBe("consistent");
    expect(existsSync(join(result.dataDir ?? "/nonexistent", "node-1.log"))).toBe(true);
    rmSync(result.dataDir as string, { recursive: true, force: true });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
