// Proves `kv lock` and `kv elect` (src/cli/lock.ts) in the built executable against real in-process nodes: `kv lock NAME -- CMD` runs CMD with KV_LOCK_KEY and KV_LOCK_FENCE, exits with its status and releases (flags after -- belong to CMD, even -h); without CMD it prints the key and fence and holds until SIGTERM; a paused holder loses the lock to a waiter, says so on stderr once resumed and SIGTERMs its CMD, and a killed holder's lease runs out for the waiter; a CMD that cannot run exits 127; an interrupted wait leaves the queue; `kv elect` campaigns and holds office, and `kv elect --observe` prints each new leader.
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { createTcpProxy } from "../src/chaos/tcp-proxy.ts";
import { createClient } from "../src/client/index.ts";
import { kvCommand } from "./helpers/kv-binary.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";

/** A spawned `kv` with its output gathered as it comes. */
interface Running {
  readonly proc: Subprocess<"ignore", "pipe", "pipe">;
  out(): string;
  err(): string;
  /** Until stdout (or stderr) holds `text`; fails after `timeoutMs`. */
  waitFor(text: string, stream?: "out" | "err", timeoutMs?: number): Promise<void>;
}

const spawned = new Set<Subprocess>();

function spawnKv(args: string[]): Running {
  const proc = Bun.spawn([...kvCommand(), ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  spawned.add(proc);
  let out = "";
  let err = "";
  const pump = async (stream: ReadableStream<Uint8Array>, add: (text: string) => void) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) add(decoder.decode(chunk, { stream: true }));
  };
  void pump(proc.stdout, (text) => (out += text));
  void pump(proc.stderr, (text) => (err += text));
  return {
    proc,
    out: () => out,
    err: () => err,
    async waitFor(text, stream = "out", timeoutMs = 20_000) {
      const deadline = performance.now() + timeoutMs;
      while (!(stream === "out" ? out : err).includes(text)) {
        if (proc.exitCode !== null && !(stream === "out" ? out : err).includes(text)) {
          await Bun.sleep(50); // let the pipes drain once more
          if ((stream === "out" ? out : err).includes(text)) return;
          throw new Error(`kv ${args.join(" ")} exited ${proc.exitCode} before printing '${text}': ${out} ${err}`);
        }
        if (performance.now() > deadline) throw new Error(`kv ${args.join(" ")} did not print '${text}': ${out} ${err}`);
        await Bun.sleep(10); // polling interval
      }
    },
  };
}

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10); // polling interval
  }
}

describe("kv lock and kv elect", () => {
  let dir: string;
  let cluster: ServerCluster;

  beforeAll(async () => {
    kvCommand(); // built once, before any test's clock runs
    dir = mkdtempSync(join(tmpdir(), "kv-lock-cli-"));
    cluster = createServerCluster({ size: 3, baseDir: dir, config: () => ({ watch: { progressMs: 200 } }) });
    await cluster.start();
    await cluster.waitForLeader();
  });
  afterEach(async () => {
    for (const proc of spawned) {
      if (proc.exitCode === null && proc.signalCode === null) {
        process.kill(proc.pid, "SIGCONT");
        process.kill(proc.pid, "SIGKILL");
      }
      await proc.exited;
    }
    spawned.clear();
  });
  afterAll(async () => {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const endpoints = () => cluster.nodes.map((n) => cluster.node(n.id).httpUrl).join(",");
  const keysUnder = async (prefix: string) => {
    const keys: string[] = [];
    for await (const page of createClient({ endpoints: endpoints() }).list(prefix)) keys.push(...page.items.map((i) => i.key));
    return keys;
  };

  test("kv lock --no-wait (etcd's TryLock) takes a free lock at once, and exits 1 at once, running nothing and leaving no key, while another contender holds it (the client: wait: false, refused locked)", async () => {
    const free = spawnKv(["lock", "try", "--no-wait", "--endpoints", endpoints(), "--", "sh", "-c", "echo ran free"]);
    expect(await free.proc.exited).toBe(0);
    await free.waitFor("ran free");
    const holder = spawnKv(["lock", "try", "--endpoints", endpoints()]);
    await holder.waitFor("\t");
    const refused = spawnKv(["lock", "try", "--no-wait", "--endpoints", endpoints(), "--", "sh", "-c", "echo ran held"]);
    expect(await refused.proc.exited).toBe(1);
    expect(refused.out()).not.toContain("ran held");
    expect(refused.err()).toContain("is held by another contender");
    const client = createClient({ endpoints: endpoints() });
    const locked = await client.lock("try", { wait: false }).then(
      () => "held",
      (error: unknown) => (error as { code?: string }).code,
    );
    expect(locked).toBe("locked");
    // Only the holder's key is in the queue: the refused contenders gave theirs back.
    expect(await keysUnder("try/")).toEqual([holder.out().split("\t")[0] as string]);
    process.kill(holder.proc.pid, "SIGTERM");
    expect(await holder.proc.exited).toBe(0);
    expect(await keysUnder("try/")).toEqual([]);
    client.close();
  });

  test("kv lock NAME -- CMD runs CMD with KV_LOCK_KEY and KV_LOCK_FENCE and exits with its status (3), releasing", async () => {
    const run = spawnKv(["lock", "job", "--endpoints", endpoints(), "--", "sh", "-c", 'echo "key=$KV_LOCK_KEY fence=$KV_LOCK_FENCE"; exit 3', "-h"]);
    expect(await run.proc.exited).toBe(3);
    await run.waitFor("fence=");
    const match = /key=(job\/\d+) fence=(\d+)/.exec(run.out());
    expect(match).not.toBeNull();
    expect(Number(match?.[2])).toBeGreaterThan(0);
    expect(await keysUnder("job/")).toEqual([]);
  });

  test("a --ttl under the cluster's shortest lease is said to be raised, as kv lease grant says it; one above it is not (found in a black-box walkthrough: silent)", async () => {
    const short = spawnKv(["lock", "short-ttl", "--ttl", "1ms", "--endpoints", endpoints(), "--", "true"]);
    expect(await short.proc.exited).toBe(0);
    await short.waitFor("kv: --ttl 1 ms was raised to ", "err");
    const long = spawnKv(["lock", "short-ttl", "--ttl", "30s", "--endpoints", endpoints(), "--", "true"]);
    expect(await long.proc.exited).toBe(0);
    expect(long.err()).not.toContain("raised");
  });

  test("without CMD it prints the key and the fence, holds the lock until SIGTERM, then releases", async () => {
    const holder = spawnKv(["lock", "held", "--json", "--endpoints", endpoints()]);
    await holder.waitFor("fence");
    const printed = JSON.parse(holder.out().trim()) as { key: string; fence: number };
    expect(printed.key).toMatch(/^held\/\d+$/);
    expect(await keysUnder("held/")).toEqual([printed.key]);
    // A second contender waits behind it.
    const kv = createClient({ endpoints: endpoints() });
    let acquired = false;
    const second = kv.lock("held", { ttlMs: 5_000 }).then((lock) => {
      acquired = true;
      return lock;
    });
    await until(async () => (await keysUnder("held/")).length === 2, "the second contender to queue");
    expect(acquired).toBe(false);
    holder.proc.kill("SIGTERM");
    expect(await holder.proc.exited).toBe(0);
    const lock = await second;
    expect(lock.fence).toBeGreaterThan(printed.fence);
    await lock.release();
  });

  test("SIGHUP (a closed terminal) goes on to CMD as SIGTERM does, and the lock is released once CMD exits (found in a black-box review: kv lock died, CMD ran on, the lock held until its lease ran out)", async () => {
    const holder = spawnKv(["lock", "hangup", "--endpoints", endpoints(), "--", "sh", "-c", 'trap "echo got-hup; exit 5" HUP; echo ready; while :; do sleep 0.05; done']);
    await holder.waitFor("ready");
    expect(await keysUnder("hangup/")).toHaveLength(1);
    holder.proc.kill("SIGHUP");
    expect(await holder.proc.exited).toBe(5);
    await holder.waitFor("got-hup");
    expect(await keysUnder("hangup/")).toEqual([]);
  });

  test("started with SIGHUP ignored (nohup), kv lock leaves it ignored: a handler would end the hold at logout (found in review)", async () => {
    // `trap "" HUP` sets SIGHUP ignored, which exec keeps, as nohup does.
    const proc = Bun.spawn(["sh", "-c", 'trap "" HUP; exec "$@"', "sh", ...kvCommand(), "lock", "nohup", "--endpoints", endpoints()], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
    spawned.add(proc);
    const reader = proc.stdout.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toMatch(/^nohup\/\d+\t\d+\n$/);
    // Still ignored once it holds (its handlers for SIGINT and SIGTERM are in place by then).
    const status = readFileSync(`/proc/${proc.pid}/status`, "utf8");
    const ignored = BigInt(`0x${/^SigIgn:\s*([0-9a-f]+)$/m.exec(status)![1]}`);
    const caught = BigInt(`0x${/^SigCgt:\s*([0-9a-f]+)$/m.exec(status)![1]}`);
    expect([ignored & 1n, (caught >> 14n) & 1n]).toEqual([1n, 1n]);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
    expect(await keysUnder("nohup/")).toEqual([]);
  });

  test("a holder without CMD whose key another client writes over exits 1 saying so, having deleted the key first: off its lease, it would block the lock for ever (found in review: the exit cut the delete off)", async () => {
    const holder = spawnKv(["lock", "overwritten", "--endpoints", endpoints()]);
    await holder.waitFor("\t");
    const key = holder.out().split("\t")[0]!;
    await createClient({ endpoints: endpoints() }).put(key, "someone else's");
    expect(await holder.proc.exited).toBe(1);
    expect(holder.err()).toContain(`lost the lock overwritten (key ${key}): the holder's key ${key} was written by another client`);
    expect(await keysUnder("overwritten/")).toEqual([]);
  });

  test("a holder whose key another client deletes says it lost the lock and SIGTERMs CMD (found in a black-box review: two holders ran at once)", async () => {
    const holder = spawnKv(["lock", "deleted", "--endpoints", endpoints(), "--", "sh", "-c", 'trap "echo got-term; exit 7" TERM; echo "held $KV_LOCK_KEY"; while :; do sleep 0.05; done']);
    await holder.waitFor("held ");
    const key = /held (deleted\/\d+)/.exec(holder.out())![1]!;
    await createClient({ endpoints: endpoints() }).delete(key);
    expect(await holder.proc.exited).toBe(7);
    await holder.waitFor("got-term");
    expect(holder.err()).toContain(`lost the lock deleted (key ${key}): the holder's key ${key} was deleted by another client`);
  });

  test("a CMD that exits 0 after the lock was lost under it makes kv lock exit 1, so 'kv lock x -- job && done' does not go on (found in a black-box review: it exited 0)", async () => {
    const holder = spawnKv(["lock", "lost-ok", "--endpoints", endpoints(), "--", "sh", "-c", 'trap "exit 0" TERM; echo "held $KV_LOCK_KEY"; while :; do sleep 0.05; done']);
    await holder.waitFor("held ");
    const key = /held (lost-ok\/\d+)/.exec(holder.out())![1]!;
    await createClient({ endpoints: endpoints() }).delete(key);
    expect(await holder.proc.exited).toBe(1);
    expect(holder.err()).toContain(`lost the lock lost-ok (key ${key})`);
    expect(holder.err()).toContain("exited 0 after the lock was lost: exit 1");
  });

  test("a paused holder's lease runs out: a waiter takes the lock; resumed, the holder says it lost it and SIGTERMs CMD", async () => {
    const holder = spawnKv(["lock", "stalled", "--ttl", "500ms", "--endpoints", endpoints(), "--", "sh", "-c", 'echo "fence=$KV_LOCK_FENCE"; exec sleep 60']);
    await holder.waitFor("fence=");
    const holderFence = Number(/fence=(\d+)/.exec(holder.out())?.[1]);
    const kv = createClient({ endpoints: endpoints() });
    const waiting = kv.lock("stalled", { ttlMs: 5_000 });
    await until(async () => (await keysUnder("stalled/")).length === 2, "the waiter to queue");
    process.kill(holder.proc.pid, "SIGSTOP");
    const lock = await waiting;
    expect(lock.fence).toBeGreaterThan(holderFence);
    process.kill(holder.proc.pid, "SIGCONT");
    expect(await holder.proc.exited).toBe(143); // sleep's status after SIGTERM
    await holder.waitFor("lost the lock stalled", "err");
    expect(holder.err()).toContain("SIGTERM");
    await lock.release();
  });

  test("a holder cut off from the cluster exits 1, saying it lost the lock, before a waiter takes it: it releases nothing first (found in a black-box review: it waited out two client timeouts, running on while the waiter held the lock)", async () => {
    const leader = await cluster.waitForLeader();
    const proxy = createTcpProxy(cluster.node(leader).httpPort);
    try {
      const holder = spawnKv(["lock", "cutoff", "--ttl", "1s", "--json", "--endpoints", `http://127.0.0.1:${proxy.port}`]);
      await holder.waitFor("fence");
      const kv = createClient({ endpoints: endpoints() });
      const waiting = kv.lock("cutoff", { ttlMs: 5_000 });
      await until(async () => (await keysUnder("cutoff/")).length === 2, "the waiter to queue");
      proxy.cut();
      const lock = await waiting;
      // The waiter holds the lock only once the holder's lease ran out on the cluster, after the
      // holder's own deadline: by then the holder has exited.
      expect(holder.proc.exitCode).toBe(1);
      await holder.waitFor("lost the lock cutoff", "err");
      await lock.release();
    } finally {
      proxy.close();
    }
  });

  test("a holder interrupted while no node answers says the lock stays held until its lease expires and exits 3 (found in a black-box review: it waited out two timeouts and exited 0 in silence)", async () => {
    const leader = await cluster.waitForLeader();
    const proxy = createTcpProxy(cluster.node(leader).httpPort);
    try {
      const holder = spawnKv(["lock", "outage", "--ttl", "60s", "--timeout-ms", "1000", "--endpoints", `http://127.0.0.1:${proxy.port}`]);
      await holder.waitFor("outage/");
      proxy.cut();
      holder.proc.kill("SIGINT");
      expect(await holder.proc.exited).toBe(3);
      expect(holder.err()).toContain("could not release the lock outage");
      expect(holder.err()).toContain("it stays held until its lease expires, within 60000 ms");
      expect(await keysUnder("outage/")).toHaveLength(1);
    } finally {
      proxy.close();
    }
  });

  test("a wait interrupted while its first request gets no answer exits 130 at once, not after --timeout-ms (found in a black-box review: 19 s)", async () => {
    // A server that takes connections and never answers: the grant's first attempt hangs.
    let accepted = 0;
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { open: () => void accepted++, data: () => undefined } });
    try {
      for (const args of [["lock", "silent"], ["elect", "silent", "v"], ["elect", "silent", "--observe"]]) {
        const before = accepted;
        const waiter = spawnKv([...args, "--timeout-ms", "60000", "--endpoints", `http://127.0.0.1:${silent.port}`]);
        await until(() => accepted > before, "the first request to arrive");
        waiter.proc.kill("SIGINT");
        expect([args.join(" "), await waiter.proc.exited]).toEqual([args.join(" "), args.includes("--observe") ? 0 : 130]);
      }
    } finally {
      silent.stop(true);
    }
  }, 20_000);

  test("kv elect cut off from the cluster exits 1, saying it lost the office, before another candidate is elected", async () => {
    const leader = await cluster.waitForLeader();
    const proxy = createTcpProxy(cluster.node(leader).httpPort);
    try {
      const holder = spawnKv(["elect", "cutoff-chair", "first", "--ttl", "1s", "--endpoints", `http://127.0.0.1:${proxy.port}`]);
      await holder.waitFor("elected: cutoff-chair = first");
      const kv = createClient({ endpoints: endpoints() });
      const campaign = kv.elect("cutoff-chair", "second", { ttlMs: 5_000 });
      await until(async () => (await keysUnder("cutoff-chair/")).length === 2, "the second candidate to campaign");
      proxy.cut();
      const office = await campaign;
      expect(holder.proc.exitCode).toBe(1);
      await holder.waitFor("lost office in cutoff-chair", "err");
      await office.resign();
    } finally {
      proxy.close();
    }
  });

  test("a killed holder's lease runs out and the waiter takes the lock", async () => {
    const holder = spawnKv(["lock", "killed", "--ttl", "500ms", "--json", "--endpoints", endpoints()]);
    await holder.waitFor("fence");
    const printed = JSON.parse(holder.out().trim()) as { key: string; fence: number };
    const kv = createClient({ endpoints: endpoints() });
    const waiting = kv.lock("killed", { ttlMs: 5_000 });
    await until(async () => (await keysUnder("killed/")).length === 2, "the waiter to queue");
    process.kill(holder.proc.pid, "SIGKILL");
    const lock = await waiting;
    expect(lock.fence).toBeGreaterThan(printed.fence);
    expect(await keysUnder("killed/")).toEqual([lock.key]);
    await lock.release();
  });

  test("kv elect campaigns and holds office; kv elect --observe prints each new leader", async () => {
    const observer = spawnKv(["elect", "chair", "--observe", "--endpoints", endpoints()]);
    const alpha = spawnKv(["elect", "chair", "alpha", "--endpoints", endpoints()]);
    await alpha.waitFor("elected: chair = alpha");
    await observer.waitFor("alpha\n");
    const beta = spawnKv(["elect", "chair", "beta", "--endpoints", endpoints()]);
    await until(async () => (await keysUnder("chair/")).length === 2, "beta to campaign");
    expect(beta.out()).toBe("");
    alpha.proc.kill("SIGTERM");
    expect(await alpha.proc.exited).toBe(0);
    await beta.waitFor("elected: chair = beta");
    await observer.waitFor("beta\n");
    expect(observer.out()).toBe("alpha\nbeta\n");
    beta.proc.kill("SIGINT");
    expect(await beta.proc.exited).toBe(0);
    observer.proc.kill("SIGTERM");
    expect(await observer.proc.exited).toBe(0);
    expect(await keysUnder("chair/")).toEqual([]);
  });

  test("kv elect --observe prints a leader's value that is not UTF-8 as the other commands do: base64 (found in review: U+FFFD)", async () => {
    const observer = spawnKv(["elect", "bytes-chair", "--observe", "--json", "--endpoints", endpoints()]);
    const plain = spawnKv(["elect", "bytes-chair", "--observe", "--endpoints", endpoints()]);
    const office = await createClient({ endpoints: endpoints() }).elect("bytes-chair", new Uint8Array([0xff, 0x00, 0x41]));
    try {
      await observer.waitFor("\n");
      expect(JSON.parse(observer.out())).toEqual({ key: office.key, value: { base64: "/wBB" }, version: office.fence });
      await plain.waitFor("\n");
      expect(plain.out()).toBe("base64:/wBB\n");
    } finally {
      await office.resign();
    }
    for (const run of [observer, plain]) {
      run.proc.kill("SIGTERM");
      expect(await run.proc.exited).toBe(0);
    }
  });

  test("kv elect --json prints the office's key, fence and lease id, as kv lock --json does", async () => {
    const office = spawnKv(["elect", "desk", "gamma", "--json", "--endpoints", endpoints()]);
    await office.waitFor("\n");
    const printed = JSON.parse(office.out()) as { elected: boolean; key: string; fence: number; leaseId: number };
    expect(printed).toMatchObject({ elected: true, name: "desk", value: "gamma" });
    expect(printed.key).toBe(`desk/${printed.leaseId}`);
    office.proc.kill("SIGTERM");
    expect(await office.proc.exited).toBe(0);
  });

  test("a CMD that cannot be run exits 127 (as a shell would), releasing the lock", async () => {
    const run = spawnKv(["lock", "nocmd", "--endpoints", endpoints(), "--", "/nonexistent/kv-lock-test-cmd"]);
    expect(await run.proc.exited).toBe(127);
    await run.waitFor("cannot run", "err");
    expect(await keysUnder("nocmd/")).toEqual([]);
  });

  test("a wait interrupted by SIGINT leaves the queue and exits 130", async () => {
    const kv = createClient({ endpoints: endpoints() });
    const holder = await kv.lock("interrupted", { ttlMs: 5_000 });
    const waiter = spawnKv(["lock", "interrupted", "--endpoints", endpoints(), "--", "true"]);
    await until(async () => (await keysUnder("interrupted/")).length === 2, "the waiter to queue");
    waiter.proc.kill("SIGINT");
    expect(await waiter.proc.exited).toBe(130);
    expect(await keysUnder("interrupted/")).toEqual([holder.key]);
    await holder.release();
  });

  test("usage errors: nothing after --, two names, --observe with a value", async () => {
    for (const args of [
      ["lock", "x", "--"],
      ["lock", "x", "y", "--", "true"],
      ["elect", "x", "v", "--observe"],
      ["elect", "x"],
      ["lock", "x", "--ttl", "soon", "--", "true"],
    ]) {
      const run = spawnKv([args[0] as string, "--endpoints", endpoints(), ...args.slice(1)]);
      expect(await run.proc.exited).toBe(2);
      await run.waitFor("kv:", "err");
    }
  });

  test("a --ttl without its unit is a usage error, as kv lease grant's TTL: 30 was a 480 ms lease, not 30 s (found in a black-box review)", async () => {
    for (const args of [
      ["lock", "x", "--ttl", "30", "--", "true"],
      ["elect", "x", "v", "--ttl", "30"],
    ]) {
      const run = spawnKv([args[0] as string, "--endpoints", endpoints(), ...args.slice(1)]);
      expect(await run.proc.exited).toBe(2);
      await run.waitFor("needs a unit: 30s for 30 seconds", "err");
    }
  });
});
