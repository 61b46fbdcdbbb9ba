import { defineCommand } from "citty";
import { KvClientError } from "../client/index.ts";
import { call, ClientExit, connection, connectionArgs, exitFor } from "./client.ts";
import { abortedPromise, interruption } from "./lock.ts";
import { parseTtl, UsageError } from "./usage-error.ts";
import { exitAfterOutput, printLine } from "./output.ts";

/**
 * `kv lease grant|revoke|get|list|keepalive`: leases from the command line, through the client library
 * (src/client/leases.ts), as etcdctl's `lease` commands. Attach keys with `kv put --lease ID`.
 * Exit codes as the other client commands: 0 ok, 1 `get` of a lease that does not exist (or a
 * keeper that lost its lease), 2 a usage error or a refused request (`revoke` or `keepalive` of a
 * lease that does not exist), 3 unavailable.
 */

const idArg = { id: { type: "positional", required: true, description: "The lease's id" } } as const;

function keys(count: number): string {
  return `${count} key${count === 1 ? "" : "s"}`;
}

/** The ID argument: a lease id, the index of its grant (errors name the argument, not a flag). */
function leaseId(text: string): number {
  const id = Number(text);
  if (!/^[1-9][0-9]{0,15}$/.test(text) || !Number.isSafeInteger(id)) throw new UsageError(`ID must be a lease id (a whole number from 1), got '${text}'`);
  return id;
}

const grantCommand = defineCommand({
  meta: { name: "grant", description: "Grant a lease of TTL (10s, 1m, 500ms: a unit is needed) and print its id and TTL in ms" },
  args: { ttl: { type: "positional", required: true, description: "How long the lease lives without a keepalive: 10s, 1m, 500ms" }, ...connectionArgs },
  async run({ args }) {
    const ttlMs = parseTtl("TTL", args.ttl);
    const conn = connection(args);
    const lease = await call(() => conn.client.leases.grant(ttlMs));
    // The server raises a TTL below its minimum (twice the election timeout): say so.
    const raised = lease.raisedFromMs === undefined ? "" : `\t(raised from ${lease.raisedFromMs} ms)`;
    printLine(conn.json ? JSON.stringify(lease) : `${lease.id}\t${lease.ttlMs}${raised}`);
  },
});

const revokeCommand = defineCommand({
  meta: { name: "revoke", description: "Revoke lease ID: its keys are deleted at one version" },
  args: { ...idArg, ...connectionArgs },
  async run({ args }) {
    const id = leaseId(args.id);
    const conn = connection(args);
    const revoked = await call(() => conn.client.leases.revoke(id));
    printLine(conn.json ? JSON.stringify(revoked) : `revoked lease ${revoked.id}: ${keys(revoked.deletedKeys)} deleted at version ${revoked.version}`);
  },
});

const getCommand = defineCommand({
  meta: { name: "get", description: "Show lease ID: its TTL, the time left and its keys (exit 1 when it does not exist)" },
  args: { ...idArg, ...connectionArgs },
  async run({ args }) {
    const id = leaseId(args.id);
    const conn = connection(args);
    let info: Awaited<ReturnType<typeof conn.client.leases.get>>;
    try {
      info = await conn.client.leases.get(id);
    } catch (error) {
      // As `kv get` of an absent key: a lease that expired, was revoked or never existed is not found.
      if (error instanceof KvClientError && error.code === "lease_not_found") throw new ClientExit(1, `lease_not_found: ${error.message}`);
      return exitFor(error);
    }
    if (conn.json) {
      printLine(JSON.stringify(info));
      return;
    }
    printLine(`lease ${info.id}\tttl ${info.ttlMs} ms\tremaining ${info.remainingMs} ms\t${keys(info.keys.length)}${info.keysTruncated ? " (first listed)" : ""}`);
    for (const key of info.keys) printLine(key);
  },
});

const listCommand = defineCommand({
  meta: { name: "list", description: "List every lease: id, TTL and time left in ms (in the order of the ids' decimal text)" },
  args: { ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    let after: number | undefined;
    for (;;) {
      const page = await call(() => conn.client.leases.list({ limit: 1_000, ...(after === undefined ? {} : { after }) }));
      for (const lease of page.leases) printLine(conn.json ? JSON.stringify(lease) : `${lease.id}\t${lease.ttlMs}\t${lease.remainingMs}`);
      const last = page.leases[page.leases.length - 1];
      if (!page.more || last === undefined) return;
      after = last.id;
    }
  },
});

const keepaliveCommand = defineCommand({
  meta: { name: "keepalive", description: "Keep lease ID alive until interrupted (a keepalive every third of its TTL); --once sends one" },
  args: { ...idArg, once: { type: "boolean", description: "Send one keepalive, print the TTL it restarted, and exit" }, ...connectionArgs },
  async run({ args }) {
    const id = leaseId(args.id);
    const conn = connection(args);
    const sentAtMs = performance.now();
    const first = await call(() => conn.client.leases.keepAlive(id));
    // Before the first line: a SIGINT right after it was the default one, which kills (found in review).
    const interrupted = args.once === true ? undefined : interruption();
    printLine(conn.json ? JSON.stringify(first) : `${first.id}\t${first.ttlMs}`);
    if (interrupted === undefined) return;
    const keeper = conn.client.leases.keep(id, { ttlMs: first.ttlMs, sentAtMs });
    await Promise.race([abortedPromise(interrupted.signal), abortedPromise(keeper.lost)]);
    keeper.stop();
    interrupted.dispose();
    if (keeper.lost.aborted && !interrupted.signal.aborted) {
      const reason = keeper.lost.reason instanceof Error ? keeper.lost.reason.message : String(keeper.lost.reason);
      throw new ClientExit(1, `lost lease ${id}: ${reason}`);
    }
    // A keepalive under way (retrying while no node answers) would hold the process until its budget
    // ran out (found in a black-box review: 30 s): interrupted, exit now.
    await exitAfterOutput(0);
  },
});

export const leaseCommand = defineCommand({
  meta: { name: "lease", description: "Leases: grant, revoke, get, list, keepalive (attach keys with kv put --lease ID)" },
  subCommands: { grant: grantCommand, revoke: revokeCommand, get: getCommand, list: listCommand, keepalive: keepaliveCommand },
});

