// Proves a data dir belongs to the node that first started on it: the built executable refuses to
// start it as another node (a copy of node 1's data dir would give node 3 node 1's vote and log),
// leaving it untouched, and a data dir from before the node-id file gets one at its next start;
// and that a vote hold recorded in the data dir (votes-held) is honoured at start, then removed.
import { afterAll, expect, test } from "bun:test";
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kvCommand } from "./helpers/kv-binary.ts";
import { createServerCluster } from "./helpers/server-cluster.ts";

const baseDir = mkdtempSync(join(tmpdir(), "kv-node-id-"));
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

/** Every file under `dir` with its bytes (directories as such), in name order. */
function filesOf(dir: string): [string, string][] {
  return readdirSync(dir, { recursive: true })
    .map(String)
    .sort()
    .map((name) => [name, statSync(join(dir, name)).isDirectory() ? "dir" : readFileSync(join(dir, name)).toString("base64")]);
}

/** Runs `kv serve` as node `id` of a one-voter cluster (or of `cluster`) on `dataDir` until it exits, or SIGKILLs it once `until` shows in its output. */
async function serve(id: number, dataDir: string, until?: string, cluster = `${id}=http://127.0.0.1:0`): Promise<{ code: number; err: string }> {
  const child = Bun.spawn(
    [...kvCommand(), "serve", "--id", String(id), "--cluster", cluster, "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    if (until === undefined) {
      const [code, err] = await Promise.all([child.exited, new Response(child.stderr).text()]);
      return { code, err };
    }
    let out = "";
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      out += decoder.decode(chunk);
      if (out.includes(until)) break;
    }
    return { code: -1, err: out };
  } finally {
    child.kill("SIGKILL");
    await child.exited;
  }
}

test("a data dir copied from node 1 does not start as node 3, and is left as it was", async () => {
  const cluster = createServerCluster({ size: 1, baseDir });
  try {
    await cluster.start();
    await cluster.waitForLeader();
    expect((await fetch(`${cluster.node(1).httpUrl}/kv/k`, { method: "PUT", body: "v" })).status).toBe(200);
    await cluster.node(1).stop();
  } finally {
    await cluster.stop();
  }
  const original = join(baseDir, "node-1");
  expect(readFileSync(join(original, "node-id"), "utf8").trim()).toBe("1");
  const copy = join(baseDir, "copy-as-3");
  cpSync(original, copy, { recursive: true });
  const before = readdirSync(copy).sort();

  const refused = await serve(3, copy);
  expect(refused.code).toBe(1);
  // It started as node 3 on node 1's vote and log without a word.
  expect(refused.err).toContain("node 1's data dir");
  expect(refused.err).toContain("not node 3's");
  expect(readdirSync(copy).sort()).toEqual(before);
  expect(readFileSync(join(copy, "node-id"), "utf8").trim()).toBe("1");
  // Its own node starts on it.
  expect((await serve(1, copy, '"event":"started"')).err).toContain('"event":"started"');
});

test("a copy of node 1's data dir without its node-id file, or of only kv.db and its log, is refused as node 3 too", async () => {
  // Three voters, so the voters recorded in the copy are node 3's cluster's too: only whose data dir it is differs.
  const cluster = createServerCluster({ size: 3, baseDir: join(baseDir, "bare") });
  try {
    await cluster.start();
    const leader = await cluster.waitForLeader();
    expect((await fetch(`${cluster.node(leader).httpUrl}/kv/k`, { method: "PUT", body: "v" })).status).toBe(200);
  } finally {
    await cluster.stop();
  }
  const original = join(baseDir, "bare", "node-1");
  const threeVoters = "1=http://127.0.0.1:1,2=http://127.0.0.1:2,3=http://127.0.0.1:0";
  for (const [name, keep] of [
    ["no-node-id-file", (file: string) => file !== "node-id"],
    ["database-and-log-only", (file: string) => file === "kv.db" || file.startsWith("kv.db-log")],
  ] as const) {
    const copy = join(baseDir, name);
    cpSync(original, copy, { recursive: true, filter: (source) => source === original || keep(source.slice(original.length + 1)) });
    expect(existsSync(join(copy, "node-id"))).toBe(false);
    const database = readFileSync(join(copy, "kv.db"));
    const refused = await serve(3, copy, undefined, threeVoters);
    expect(refused.code).toBe(1);
    // Both started as node 3 on node 1's vote and log (the node-id file was all that said whose they were).
    expect(refused.err).toContain("node 1's, not node 3's");
    expect(existsSync(join(copy, "node-id"))).toBe(false);
    expect(readFileSync(join(copy, "kv.db")).equals(database)).toBe(true);
    expect((await serve(1, copy, '"event":"started"', threeVoters.replace("1=http://127.0.0.1:1", "1=http://127.0.0.1:0").replace("3=http://127.0.0.1:0", "3=http://127.0.0.1:3"))).err).toContain('"event":"started"');
  }
});

test("a data dir from before the node-id file (0.5.0) gets one with the id it starts as", async () => {
  const dataDir = join(baseDir, "v0.5.0");
  cpSync(join(import.meta.dir, "fixtures", "v0.5.0", "node-1"), dataDir, { recursive: true });
  expect(existsSync(join(dataDir, "node-id"))).toBe(false);
  expect((await serve(1, dataDir, '"event":"started"')).err).toContain('"event":"started"');
  expect(readFileSync(join(dataDir, "node-id"), "utf8").trim()).toBe("1");
  expect((await serve(2, dataDir)).err).toContain("node 1's data dir");
});

test("a data dir from before a database recorded its node (0.5.0 and earlier) is refused, and left as it was, as a node its configuration does not hold (found in a black-box review: started as node 2 and refused for its voters, node 1's data dir was claimed for node 2, and node 1 was refused on it after)", async () => {
  for (const release of ["v0.1.0", "v0.5.0"]) {
    const dataDir = join(baseDir, `${release}-as-2`);
    cpSync(join(import.meta.dir, "fixtures", release, "node-1"), dataDir, { recursive: true });
    const before = filesOf(dataDir);
    const refused = await serve(2, dataDir);
    expect([release, refused.code]).toEqual([release, 1]);
    expect(refused.err).toContain("node 2 is not among them");
    expect(existsSync(join(dataDir, "node-id"))).toBe(false);
    expect(filesOf(dataDir)).toEqual(before);
    // Its own node still starts on it.
    expect((await serve(1, dataDir, '"event":"started"')).err).toContain('"event":"started"');
  }
});

test("a node-id that is a directory is refused with what to do, not a stack trace (found in review)", async () => {
  const dataDir = join(baseDir, "directory");
  cpSync(join(import.meta.dir, "fixtures", "v0.5.0", "node-1"), dataDir, { recursive: true });
  mkdirSync(join(dataDir, "node-id"));
  const refused = await serve(1, dataDir);
  expect(refused.code).toBe(1);
  expect(refused.err).toContain("cannot be read");
  expect(refused.err).not.toContain(" at ");
});

test("a node-id file that holds no id is refused, not guessed at", async () => {
  const dataDir = join(baseDir, "garbled");
  cpSync(join(import.meta.dir, "fixtures", "v0.5.0", "node-1"), dataDir, { recursive: true });
  await Bun.write(join(dataDir, "node-id"), "one\n");
  const refused = await serve(1, dataDir);
  expect(refused.code).toBe(1);
  expect(refused.err).toContain("not a node id");
  expect(refused.err).toContain('\\"one\\"');
});

test("a data dir that records a vote hold (votes-held) holds its votes at start though its log is not empty, and drops the record once the hold ends", async () => {
  const dataDir = join(baseDir, "held");
  cpSync(join(import.meta.dir, "fixtures", "v0.5.0", "node-1"), dataDir, { recursive: true });
  await Bun.write(join(dataDir, "votes-held"), "held\n");
  // The only voter leads at once, which ends the hold: the record is gone by the time it says it started.
  expect((await serve(1, dataDir, '"event":"started"')).err).toContain('"event":"started"');
  expect(existsSync(join(dataDir, "votes-held"))).toBe(false);
});

test("a data dir bootstrapped with --cluster, started again with --join and no --cluster, is refused saying to start it with its --cluster (found in a black-box review: only 'configured voters [1] differ' was said)", async () => {
  const dataDir = join(baseDir, "joined-again");
  const threeVoters = "1=http://127.0.0.1:0,2=http://127.0.0.1:2,3=http://127.0.0.1:3";
  expect((await serve(1, dataDir, '"event":"started"', threeVoters)).err).toContain('"event":"started"');
  const child = Bun.spawn(
    [...kvCommand(), "serve", "--id", "1", "--join", "http://127.0.0.1:2", "--listen-peer", "127.0.0.1:0", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json"],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  try {
    const [code, err] = await Promise.all([child.exited, new Response(child.stderr).text()]);
    expect(code).toBe(1);
    expect(err).toContain("differ from those recorded at bootstrap [1,2,3]");
    expect(err).toContain("start it with that --cluster again");
  } finally {
    child.kill("SIGKILL");
  }
});

test("a node that joined at other addresses, started again with neither --cluster nor --join, is refused saying how to start it (found in a review: node 2 took the default local cluster's addresses and listened where no member reaches it)", async () => {
  const dataDir = join(baseDir, "joined-elsewhere");
  // A cluster's leader, as far as a join goes: it adds node 2 as a learner at the address it gave.
  const leader = Bun.serve({
    port: 0,
    hostname: "127.0.0.1",
    async fetch(request) {
      if (request.method !== "POST" || new URL(request.url).pathname !== "/members") return Response.json({ error: "not_found", message: "stub" }, { status: 404 });
      const { peerUrl } = (await request.json()) as { peerUrl: string };
      return Response.json({
        members: [
          { id: 1, peerUrl: "http://127.0.0.1:9", httpUrl: null, role: "voter", addedIndex: 0 },
          { id: 2, peerUrl, httpUrl: null, role: "learner", addedIndex: 5 },
        ],
        leaderId: 1,
        configIndex: 5,
        clusterId: "0123456789abcdef",
      });
    },
  });
  const start = (args: string[]) =>
    Bun.spawn([...kvCommand(), "serve", "--id", "2", "--listen-http", "127.0.0.1:0", "--data-dir", dataDir, "--log-format", "json", ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  try {
    const joined = start(["--join", `http://127.0.0.1:${leader.port}`, "--listen-peer", "127.0.0.1:0", "--advertise-peer", "http://127.0.0.1:7"]);
    let out = "";
    const decoder = new TextDecoder();
    for await (const chunk of joined.stderr) {
      out += decoder.decode(chunk);
      if (out.includes('"event":"started"') || out.includes('"event":"stopping"')) break;
    }
    joined.kill("SIGKILL");
    await joined.exited;
    expect(out).toContain('"event":"started"');
    const again = start(["--listen-peer", "127.0.0.1:0"]);
    try {
      const [code, err] = await Promise.all([again.exited, new Response(again.stderr).text()]);
      expect(code).toBe(1);
      expect(err).toContain("this data dir records node 2 at http://127.0.0.1:7, not at the default local cluster's http://127.0.0.1:5002");
      expect(err).not.toContain('"event":"started"');
    } finally {
      again.kill("SIGKILL");
    }
  } finally {
    leader.stop(true);
  }
});

test("a new data dir is made for its owner only (0700), as etcd's is; an existing one is left as it is (found in a security review: 0755, and every value readable past --auth-token)", async () => {
  const fresh = join(baseDir, "made-here", "node-1");
  expect((await serve(1, fresh, '"event":"started"')).err).toContain('"event":"started"');
  expect(statSync(fresh).mode & 0o777).toBe(0o700);
  expect(statSync(join(baseDir, "made-here")).mode & 0o777).toBe(0o700);
  const existing = join(baseDir, "there-already");
  mkdirSync(existing, { mode: 0o755 });
  chmodSync(existing, 0o755);
  expect((await serve(1, existing, '"event":"started"')).err).toContain('"event":"started"');
  expect(statSync(existing).mode & 0o777).toBe(0o755);
});
