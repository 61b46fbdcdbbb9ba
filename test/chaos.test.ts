// Proves `kv chaos failover` and `kv chaos election` run as a user runs them (the built executable)
// and pass: no acknowledged write lost across a leader SIGKILL, at most one node accepting per election.
import { expect, test } from "bun:test";
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
