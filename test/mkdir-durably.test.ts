// Proves a data dir's creation is made durable: every directory mkdir created gets its entry fsynced
// in its parent (a data dir made by mkdir alone could vanish in a power loss soon after a first start).
import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mkdirDurably } from "../src/lib/fsync-path.ts";

const base = mkdtempSync(join(tmpdir(), "kv-mkdir-durably-"));
afterAll(() => rmSync(base, { recursive: true, force: true }));

function synced(path: string): string[] {
  const directories: string[] = [];
  mkdirDurably(path, (directory) => directories.push(directory));
  return directories;
}

test("each directory created has its parent fsynced, deepest first; none when it existed", () => {
  expect(synced(join(base, "a", "b", "c"))).toEqual([join(base, "a", "b"), join(base, "a"), base]);
  expect(existsSync(join(base, "a", "b", "c"))).toBe(true);
  expect(synced(join(base, "a", "b", "c"))).toEqual([]);
  mkdirSync(join(base, "x"));
  expect(synced(join(base, "x", "y", "z"))).toEqual([join(base, "x", "y"), join(base, "x")]);
});

test("a path through .. has the directories it names made durable, and the call ends (it walked up to / for ever: found in a review)", () => {
  mkdirSync(join(base, "p"));
  expect(synced(`${join(base, "p", "x")}/../y/z`)).toEqual([join(base, "p", "y"), join(base, "p")]);
  expect(existsSync(join(base, "p", "y", "z"))).toBe(true);
});

test("the real fsync runs on the directories (no error on a fresh path)", () => {
  mkdirDurably(join(base, "real", "data"));
  expect(existsSync(join(base, "real", "data"))).toBe(true);
});
