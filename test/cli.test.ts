// Proves the built executable's CLI contract: help and version work, and a bad flag or value is one
// clear line on stderr with exit code 2, before anything starts.
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvCommand } from "./helpers/kv-binary.ts";

function run(args: string[]): { code: number; out: string; err: string } {
  const proc = Bun.spawnSync([...kvCommand(), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
  return { code: proc.exitCode ?? -1, out: proc.stdout.toString(), err: proc.stderr.toString() };
}

test("kv --version prints the package version", async () => {
  const { version } = (await Bun.file(`${import.meta.dir}/../package.json`).json()) as { version: string };
  const result = run(["--version"]);
  expect(result.code).toBe(0);
  expect(result.out.trim()).toBe(version);
});

test("kv --help and kv serve --help describe the commands and flags", () => {
  const top = run(["--help"]);
  expect(top.code).toBe(0);
  expect(top.out).toContain("serve");
  expect(top.out).toContain("chaos");
  const serve = run(["serve", "--help"]);
  expect(serve.code).toBe(0);
  for (const flag of ["--id", "--cluster", "--listen-peer", "--listen-http", "--advertise-http", "--data-dir", "--tick-ms", "--election-ticks", "--heartbeat-ticks", "--quota-bytes", "--idempotency-window", "--idempotency-sessions-max"]) {
    expect(serve.out).toContain(flag);
  }
});

test("help has no trailing spaces: citty pads each row of its table to the longest (found in a black-box walkthrough: lines of 359 characters)", () => {
  for (const args of [["serve", "--help"], ["chaos", "random", "--help"], ["put", "--help"], ["--help"]]) {
    const help = run(args);
    expect([args, help.code]).toEqual([args, 0]);
    expect([args, help.out.split("\n").filter((line) => / $/.test(line)).length]).toEqual([args, 0]);
  }
});

test("kv serve --help says what --no-storage-thread does (found in a black-box review: citty printed it bare)", () => {
  const help = run(["serve", "--help"]);
  const line = help.out.split("\n").find((text) => text.includes("--no-storage-thread")) ?? "";
  expect(line.replace("--no-storage-thread", "").trim()).toContain("Storage writes on the node loop's thread");
});

test.each([
  [["serve", "--id", "1", "--bogus"], "unknown flag '--bogus'"],
  // A client URL with a path: redirects there, or a join through it, reach no route (found in review).
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--advertise-http", "http://127.0.0.1:8001/v1"], "--advertise-http 'http://127.0.0.1:8001/v1' must be only a scheme, host and port"],
  [["serve", "--id", "4", "--join", "http://127.0.0.1:8001/v1", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", join(tmpdir(), "kv-cli-never-made")], "--join 'http://127.0.0.1:8001/v1' must be only a scheme, host and port"],
  // Where it listens is no address for the others (found in a black-box review: a member at http://0.0.0.0:7605 was recorded).
  [["serve", "--id", "4", "--join", "http://127.0.0.1:8001", "--listen-peer", "0.0.0.0:7605", "--listen-http", "127.0.0.1:0", "--data-dir", join(tmpdir(), "kv-cli-never-made")], "--listen-peer 0.0.0.0:7605 is where this node listens, not an address the others reach it at: give --advertise-peer"],
  [["serve", "--id", "4", "--join", "http://127.0.0.1:8001", "--listen-peer", "[::]:7605", "--listen-http", "127.0.0.1:0", "--data-dir", join(tmpdir(), "kv-cli-never-made")], "--listen-peer [::]:7605 is where this node listens"],
  [["snapshot", "save", join(tmpdir(), "kv-cli-never.kvsnap"), "--endpoints", "http://127.0.0.1:8001/v1"], "--endpoints: endpoint 'http://127.0.0.1:8001/v1' must be only a scheme, host and port"],
  // A value that looks like a flag: say how to pass it (found in a black-box review: `kv put k -5`).
  [["put", "k", "-5", "--endpoints", "http://127.0.0.1:1"], "unknown flag '-5' for 'kv put' (see kv put --help); to pass a value that starts with '-', put '--' before it"],
  [["serve"], "Missing required argument: --id"],
  [["serve", "--id", "x"], "--id must be a whole number"],
  [["serve", "--id", "4"], "the default --cluster (nodes 1-3 on 127.0.0.1:5001-5003) has no entry for node 4: name its peer URL there, or start a node that joined a cluster as it was started (--join URL --listen-peer HOST:PORT"],
  [["serve", "--id", "4", "--cluster", "1=http://127.0.0.1:7401"], "--cluster has no entry for node 4: name its peer URL there"],
  [["serve", "--id", "1", "--cluster", "1=notaurl"], "is not a URL"],
  // A peer URL with a path: every peer call a 404, no leader ever (found in a black-box review).
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:7401/x,2=http://127.0.0.1:7402/x"], "--cluster: 'http://127.0.0.1:7401/x' must be only a scheme, host and port"],
  [["snapshot", "restore", "x.kvsnap", "--data-dir", "x", "--id", "1", "--cluster", "1=http://127.0.0.1:7401/path"], "--cluster: 'http://127.0.0.1:7401/path' must be only a scheme, host and port"],
  // One peer URL for two ids (found in a black-box review: restore took it; POST /members refuses it).
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:7401,2=http://127.0.0.1:7401/"], "--cluster gives nodes 1 and 2 one peer URL, http://127.0.0.1:7401: each needs its own"],
  [["snapshot", "restore", "x.kvsnap", "--data-dir", "x", "--id", "1", "--cluster", "1=http://127.0.0.1:7401,2=http://127.0.0.1:7401"], "--cluster gives nodes 1 and 2 one peer URL"],
  [["serve", "--id", "1", "--listen-http", "nohost"], "--listen-http must be host:port"],
  // Found in a black-box review: said "cannot listen for peers ... Is port 7651 in use?".
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:7651", "--listen-http", "127.0.0.1:7651"], "--listen-http 127.0.0.1:7651 and the peer port (--listen-peer, or this node's --cluster entry) 127.0.0.1:7651 are one port: give each its own"],
  // An empty --data-dir names no directory (found in a black-box review: restore failed on a rename of '', exit 1).
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", ""], "--data-dir needs a directory"],
  [["snapshot", "restore", "package.json", "--data-dir", " ", "--id", "1", "--cluster", "1=http://127.0.0.1:7401"], "--data-dir needs a directory"],
  [["serve", "--id", "1", "--election-ticks", "3", "--heartbeat-ticks", "3"], "--heartbeat-ticks must be a whole number from 1 to 2"],
  [["serve", "--id", "1", "--quota-bytes", "4096"], "--quota-bytes must be 0 (no quota) or at least 1048576"],
  [["serve", "--id", "1", "--quota-bytes", "-1"], "--quota-bytes must be a whole number"],
  [["serve", "--id", "1", "--idempotency-window", "ten"], "--idempotency-window must be a duration"],
  [["serve", "--id", "1", "--idempotency-window", "0s"], "--idempotency-window must be a duration"],
  // Its examples within its range (found in a black-box review: 10m and 1h offered for 100ms to 2m).
  [["serve", "--id", "1", "--request-read-timeout", "0s"], "--request-read-timeout must be a duration from 100ms to 2m such as 90s, 10s, 500ms, got '0s'"],
  [["serve", "--id", "1", "--idempotency-sessions-max", "0"], "--idempotency-sessions-max must be a whole number from 1"],
  [["frobnicate"], "unknown command 'frobnicate'"],
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--advertise-http", "notaurl"], "--advertise-http must be an http(s) URL"],
  // citty read any value of a switch but `false` as true: `--metrics-open=no` opened /metrics (found in a black-box review).
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--metrics-open=no"], "flag '--metrics-open=no': a switch is given alone, or as --metrics-open=true or --metrics-open=false"],
  [["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--storage-thread=0"], "flag '--storage-thread=0': a switch"],
  [["get", "k", "--endpoints", "http://127.0.0.1:1", "--json=off"], "flag '--json=off': a switch"],
  [["list", "--endpoints", "http://127.0.0.1:1", "--no-keys-only=true"], "flag '--no-keys-only=true' takes no value"],
  // Messages that named what the user did not write (found in a black-box review).
  [["member", "add", "0", "http://127.0.0.1:5009", "--endpoints", "http://127.0.0.1:1"], "ID must be a whole number from 1"],
  [["snapshot", "status", tmpdir()], "is not a file"],
])("kv %p is a usage error: exit 2 and one line", (args, message) => {
  const result = run(args as string[]);
  expect(result.code).toBe(2);
  expect(result.err).toContain(message as string);
  expect(result.err.trim().split("\n")).toHaveLength(1);
});

test("input that cannot be read is one line, no stack: standard input a directory, a transaction file a directory, a backup that fails to read (found in a black-box review)", () => {
  const shell = (command: string) => Bun.spawnSync(["sh", "-c", command, "sh", ...kvCommand()], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
  for (const [command, code, says] of [
    ['"$@" put k --endpoints http://127.0.0.1:1 < /tmp', 2, "cannot read standard input: "],
    ['"$@" txn --endpoints http://127.0.0.1:1 < /tmp', 2, "cannot read standard input: "],
    ['"$@" txn /tmp --endpoints http://127.0.0.1:1', 2, "cannot read '/tmp': it is not a file"],
    ['"$@" snapshot status /proc/self/mem', 1, "cannot read /proc/self/mem: "],
  ] as const) {
    const result = shell(command);
    const err = result.stderr.toString();
    expect([command, result.exitCode, err.trim().split("\n")]).toEqual([command, code, [expect.stringContaining(says)]]);
  }
});

test("a bad $KV_ENDPOINTS is named as such, not as --endpoints (found in a black-box review)", () => {
  const proc = Bun.spawnSync([...kvCommand(), "get", "k"], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000, env: { ...process.env, KV_ENDPOINTS: "ftp://127.0.0.1:1" } });
  expect(proc.exitCode).toBe(2);
  expect(proc.stderr.toString()).toContain("$KV_ENDPOINTS: ");
});

describe("kv serve that cannot start says why in one line, exit 1, no stack trace", () => {
  const scratch = mkdtempSync(join(tmpdir(), "kv-cli-start-"));
  afterAll(() => rmSync(scratch, { recursive: true, force: true }));
  const cluster = "1=http://127.0.0.1:0";

  test.each([
    ["a kv.db that is not a database", () => {
      const dir = join(scratch, "not-a-db");
      mkdirSync(dir);
      writeFileSync(join(dir, "kv.db"), "this is text, not SQLite ".repeat(100));
      return ["--data-dir", dir];
    }, "cannot open the database"],
    // With the way back, as for a damaged log (found in a black-box review: no next step).
    ["a kv.db that is not a database, and what to do", () => {
      const dir = join(scratch, "not-a-db-advice");
      mkdirSync(dir);
      writeFileSync(join(dir, "kv.db"), "this is text, not SQLite ".repeat(100));
      return ["--data-dir", dir];
    }, "the data dir is damaged and is left as it is. To bring the node back: remove it from the cluster"],
    // Said what is wrong and what to do (noted in a black-box review: "unable to open database file" alone).
    ["a kv.db that is a directory", () => {
      const dir = join(scratch, "db-is-a-dir");
      mkdirSync(join(dir, "kv.db"), { recursive: true });
      return ["--data-dir", dir];
    }, "kv.db is not a file (a directory?): move it aside"],
    ["a data dir that is a file", () => {
      const file = join(scratch, "a-file");
      writeFileSync(file, "x");
      return ["--data-dir", file];
    }, "it exists and is not a directory: give another --data-dir"],
    ["an HTTP port in use", () => {
      const taken = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
      afterAll(() => taken.stop(true));
      return ["--data-dir", join(scratch, "port"), "--listen-http", `127.0.0.1:${taken.port}`];
    }, "cannot listen for clients on 127.0.0.1:"],
  ] as const)("%s", (_what, setUp, message) => {
    const result = run(["serve", "--id", "1", "--cluster", cluster, "--log-format", "text", ...setUp()]);
    expect(result.code).toBe(1);
    expect(result.out + result.err).toContain(message);
    // Before: the error's minified stack, line after line ("    at ...").
    expect(result.err).not.toMatch(/^\s+at /m);
  });
});

test("an argument that is not valid UTF-8 is a usage error naming it, before anything is sent (it reached the command as U+FFFD, and two keys became one)", () => {
  // Raw bytes in argv: only a shell can put them there (a JavaScript string cannot hold them).
  const kv = kvCommand().join(" ");
  for (const args of [`put $'bin\\xff' A --endpoints http://127.0.0.1:9`, `get k --endpoints $'http://h\\xfe:1'`, `put k $'\\xff'`]) {
    const proc = Bun.spawnSync(["bash", "-c", `${kv} ${args}`], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
    expect([args, proc.exitCode]).toEqual([args, 2]);
    expect(proc.stderr.toString()).toContain("is not valid UTF-8");
    // A flag's value is said to be one, not a key.
    expect(proc.stderr.toString()).toContain(args.startsWith("get k --endpoints") ? "flags and their values must be UTF-8 text" : "keys must be UTF-8 text");
  }
  // Only the user's own words: the program's path may be any bytes (an install directory in Latin-1).
  const dir = mkdtempSync(join(tmpdir(), "kv-cli-"));
  try {
    const linked = Bun.spawnSync(["bash", "-c", `mkdir "${dir}"/caf$'\\xe9' && ln -s "${kvCommand()[0]}" "${dir}"/caf$'\\xe9'/kv && "${dir}"/caf$'\\xe9'/kv --version`], { stdout: "pipe", stderr: "pipe", timeout: 30_000 });
    expect([linked.exitCode, linked.stderr.toString()]).toEqual([0, ""]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // Text outside ASCII is fine: it is refused for its endpoint, not its bytes.
  const fine = Bun.spawnSync(["bash", "-c", `${kv} put é x --endpoints http://127.0.0.1:9 --timeout-ms 200`], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
  expect(fine.stderr.toString()).not.toContain("UTF-8");
  expect(fine.exitCode).not.toBe(2);
});

test("kv serve --join --listen-peer [::1]:P is no unspecified address: it goes on to join (found in review: a pattern over the text refused IPv6 loopback as ::)", async () => {
  const notKv = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("404 page not found", { status: 404 }) });
  const dataDir = mkdtempSync(join(tmpdir(), "kv-cli-join-v6-"));
  try {
    const proc = Bun.spawn([...kvCommand(), "serve", "--id", "4", "--join", `http://127.0.0.1:${notKv.port}`, "--listen-peer", "[::1]:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    // The join itself is refused (the address answers a bare 404): exit 1, not the usage error's 2.
    expect([code, `${out}${err}`]).toEqual([1, expect.stringContaining("join failed")]);
    expect(`${out}${err}`).not.toContain("is where this node listens");
  } finally {
    notKv.stop(true);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

test("kv serve on a data dir its user may not write says so and what to do (it said SQLite's 'unable to open database file' alone, or 'attempt to write a readonly database')", () => {
  // Root writes anywhere: run the executable as nobody then (a copy, where nobody may run it).
  const scratch = mkdtempSync(join(tmpdir(), "kv-cli-perm-"));
  try {
    chmodSync(scratch, 0o755);
    const bin = join(scratch, "kv");
    copyFileSync(kvCommand()[0]!, bin);
    chmodSync(bin, 0o755);
    const asAnother = process.getuid?.() === 0 ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
    const serve = (dataDir: string) =>
      Bun.spawnSync([...asAnother, bin, "serve", "--id", "1", "--cluster", "1=http://127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--log-format", "text", "--data-dir", dataDir], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
    // A data dir another user made, as kv makes it (owner only): not even readable.
    const closed = join(scratch, "closed");
    mkdirSync(closed, { mode: 0o700 });
    // One readable, but not writable: a database another user's node wrote.
    const readOnly = join(scratch, "read-only");
    mkdirSync(readOnly, { mode: 0o755 });
    writeFileSync(join(readOnly, "kv.db"), "");
    for (const dir of [closed, readOnly]) {
      const result = serve(dir);
      expect([dir, result.exitCode]).toEqual([dir, 1]);
      const err = result.stderr.toString() + result.stdout.toString();
      expect(err).toContain(`cannot open the database (${dir}): this process (uid `);
      expect(err).toContain("may not read and write the data dir: run kv as the user that owns it, or give it to kv's user (chown -R)");
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});
