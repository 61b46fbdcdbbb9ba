import { readFileSync } from "node:fs";
import { rootCertificates } from "node:tls";
import { defineCommand } from "citty";
import {
  createClient,
  KvClientError,
  UnknownOutcomeError,
  type KvClient,
  type MembersView,
  type NodeStatus,
  type RawAnswer,
  type RawRequest,
  type ReadConsistency,
} from "../client/index.ts";
import { answerOutcome, isRetryableRefusal } from "../client/outcome.ts";
import { parseIntFlag, readSecret, readSecretFile, UsageError } from "./usage-error.ts";
import { isVisibleAscii } from "../lib/visible-ascii.ts";
import { jsonValue } from "../lib/json-value.ts";
import { printBytes, printLine, readStandardInput } from "./output.ts";

/**
 * The client commands (`kv put|get|del|list|status|members`; `kv watch`, `kv lease`, `kv lock` and
 * `kv elect` have files of their own): talk to a cluster through the client
 * library (src/client), which follows redirects to the leader, moves to the next endpoint when one
 * does not answer, and retries writes under an Idempotency-Key.
 * Exit codes a script can rely on: 0 ok/found, 1 not found, 2 usage or a refused request (a lease
 * that does not exist too), 3 unavailable (no endpoint answered, no leader, or a write's outcome is
 * unknown).
 */
export class ClientExit extends Error {
  override name = "ClientExit";
  constructor(
    readonly exitCode: 0 | 1 | 2 | 3,
    message: string,
  ) {
    super(message);
  }
}

const defaultEndpoints = "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003";

/** The flags every client command takes: endpoints, output, timeout, token. */
export const connectionArgs = {
  endpoints: {
    type: "string",
    description: `Comma-separated client URLs of the cluster (default $KV_ENDPOINTS or ${defaultEndpoints})`,
    valueHint: "URLS",
  },
  json: { type: "boolean", description: "Print JSON instead of text" },
  "timeout-ms": { type: "string", description: "How long one command may take, retries on other endpoints included (default 5000)", valueHint: "MS" },
  "auth-token": { type: "string", description: "Bearer token for a cluster started with --auth-token (default $KV_AUTH_TOKEN)", valueHint: "TOKEN" },
  "auth-token-file": { type: "string", description: "Read the bearer token from this file (trailing newline ignored): a flag's value shows in ps", valueHint: "FILE" },
  cacert: { type: "string", description: "PEM file of the CA that signed the nodes' certificates, for https:// endpoints (default: the system's CAs)", valueHint: "FILE" },
} as const;

/** Where and how a client command talks to the cluster. */
export interface Connection {
  readonly client: KvClient;
  readonly json: boolean;
}

/** The connection the flags (or $KV_ENDPOINTS, $KV_AUTH_TOKEN) describe; `UsageError` for bad ones. */
export function connection(args: { endpoints?: string; json?: boolean; "timeout-ms"?: string; "auth-token"?: string; "auth-token-file"?: string; cacert?: string }): Connection {
  const timeoutMs = args["timeout-ms"] === undefined ? 5_000 : parseIntFlag("timeout-ms", args["timeout-ms"], 1, 600_000);
  let client: KvClient;
  try {
    const ca = caFile(args.cacert);
    const token = authToken(args);
    client = createClient({
      endpoints: args.endpoints ?? process.env.KV_ENDPOINTS ?? defaultEndpoints,
      timeoutMs,
      ...(token === undefined ? {} : { authToken: token }),
      ...(ca === undefined ? {} : { ca }),
    });
  } catch (error) {
    if (error instanceof KvClientError) {
      const source = args.endpoints === undefined && process.env.KV_ENDPOINTS !== undefined ? "$KV_ENDPOINTS" : "--endpoints";
      throw new UsageError(`${source}: ${error.message}`);
    }
    throw error;
  }
  return { client, json: args.json === true };
}

/**
 * The CAs a command trusts with `--cacert`: the file's, and the system's too (Bun's fetch replaces
 * the system's with `tls.ca`, found in review); a file that cannot be read, or holds no
 * certificate, is a usage error.
 */
export function caFile(path: string | undefined): string[] | undefined {
  if (path === undefined) return undefined;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (error) {
    throw new UsageError(`--cacert: cannot read ${path}: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (!text.includes("-----BEGIN CERTIFICATE-----")) throw new UsageError(`--cacert: ${path} holds no PEM certificate`);
  return [...rootCertificates, text];
}

/**
 * The bearer token: `--auth-token`, the contents of `--auth-token-file` (for scripts and cron: a
 * flag's value shows in `ps`; found in a black-box review), or `$KV_AUTH_TOKEN`.
 */
export function authToken(args: { "auth-token"?: string; "auth-token-file"?: string }): string | undefined {
  const file = args["auth-token-file"];
  if (file === undefined) {
    // An empty variable is an unset one, as kv serve takes it (an empty bearer was sent: found in a
    // black-box walkthrough); a token that cannot be sent is said with where it came from.
    const [token, source] = args["auth-token"] !== undefined ? [args["auth-token"], "--auth-token"] : [process.env.KV_AUTH_TOKEN === "" ? undefined : process.env.KV_AUTH_TOKEN, "$KV_AUTH_TOKEN"];
    if (token !== undefined && !isVisibleAscii(token)) throw new UsageError(`${source}: a token is visible ASCII characters only, as kv serve --auth-token takes it`);
    return token;
  }
  if (args["auth-token"] !== undefined) throw new UsageError("give --auth-token or --auth-token-file, not both");
  const token = readSecretFile("auth-token-file", file);
  if (token === "" || /[\r\n]/.test(token)) throw new UsageError(`--auth-token-file: '${file}' must hold the token on one line`);
  return token;
}

/** Runs one client call; its errors become the exit they mean (`exitFor`). */
export async function call<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    return exitFor(error);
  }
}

/** What a command adds when no node's certificate was trusted: which flag fixes it. */
export const TLS_HINT = " (kv: give --cacert FILE, the CA that signed the nodes' certificates, if it is not one the system trusts; and https:// URLs only for nodes that serve HTTPS)";

/**
 * Every endpoint that answered nothing was refused by its certificate (`codes`: each one's
 * `KvClientError` code): the exit a command that asks each endpoint gives then, 2 with the hint, as
 * `exitFor` gives a request every endpoint refused so (found in a black-box review: `kv status` and
 * `kv hash` exited 3 without it). Nothing when another reason is among them, or none is.
 */
export function refuseUnlessTrusted(codes: readonly (string | undefined)[], what: string): void {
  if (codes.length > 0 && codes.every((code) => code === "tls_failed")) throw new ClientExit(2, `no endpoint could be reached over TLS for ${what}: each refused its certificate${TLS_HINT}`);
}

/**
 * Throws the exit a client failure means, for every client command: 1 not found (but a lease not
 * found is 2), 3 unavailable (no endpoint answered, or a write's outcome is unknown), else as
 * `answerExit`. Anything else is rethrown.
 */
export function exitFor(error: unknown): never {
  if (error instanceof UnknownOutcomeError) {
    // The library names the header; from the command line the key is resent with the flag.
    throw new ClientExit(3, error.idempotencyKey === undefined ? error.message : `${error.message} (kv: --idempotency-key ${error.idempotencyKey})`);
  }
  if (!(error instanceof KvClientError)) throw error;
  // The library's message names what failed; from the command line, which flag fixes it (found in a
  // review: "unable to verify the first certificate" said nothing of --cacert).
  const tlsHint = error.code === "tls_failed" ? TLS_HINT : "";
  const message = error.status === 0 ? `${error.message}${tlsHint}` : `${error.code}: ${error.message}`;
  // kv lock --no-wait found the lock held: an answer, as a key not found is (exit 1), not an outage.
  if (error.code === "locked") throw new ClientExit(1, message);
  if (error.status === 0) {
    // The client's own refusal of a bad request (it sent nothing) is the caller's to fix, not an outage.
    // A TLS handshake every endpoint failed is a setting to fix (--cacert, the URL's scheme), as a refusal is.
    throw new ClientExit(error.code === "bad_request" || error.code === "tls_failed" ? 2 : 3, message);
  }
  throw new ClientExit(answerExit(error.status, error.code), message);
}

/**
 * The exit of a node's answer that is no success, by the rule the client's retries follow
 * (src/client/outcome.ts): 1 not found (a lease not found: 2); 3 unavailable for a 5xx that may have
 * applied or that passes by waiting (503 `timeout`, `no_leader`, 507 `insufficient_storage`, and
 * 429 `overloaded`, which asks to come back later: it exited 2, found in review); 2 for every other
 * refusal, `quota_exceeded` among them (waiting makes no room: `kv put` and `kv txn` exited 3 for
 * it, found in review).
 */
function answerExit(status: number, code: string | undefined): 1 | 2 | 3 {
  if (status === 404) return notFoundExit(code);
  if (status === 429) return 3;
  if (status >= 500 && (answerOutcome("POST", status, code) === "unknown" || isRetryableRefusal(status, code))) return 3;
  return 2;
}

/**
 * The exit of a 404: 1 means the key is not there; a lease that does not exist (`lease_not_found`,
 * a put or transaction naming it was refused and wrote nothing) is a refused request, 2.
 */
function notFoundExit(code: string | undefined): 1 | 2 {
  return code === "lease_not_found" ? 2 : 1;
}

/** An HTTP answer, its body read. */
export type Answer = RawAnswer;

/**
 * Sends one request through the client library, for a command without a typed call: the answer
 * (200 or a refusal for good), or the exit a failure means. A write is retried after an unknown
 * outcome only when `headers` carry an `idempotency-key`.
 */
export async function send(
  conn: Connection,
  method: RawRequest["method"],
  path: string,
  body?: Uint8Array,
  headers: Record<string, string> = {},
  readsOnly = false,
): Promise<Answer> {
  return call(() => conn.client.request({ method, path, headers, ...(body === undefined ? {} : { body }), ...(readsOnly ? { readsOnly } : {}) }));
}

/** Turns an error answer into the exit it means (see `answerExit`). */
export function fail(answer: Answer): never {
  let message = `HTTP ${answer.status}`;
  let code: string | undefined;
  try {
    const parsed = JSON.parse(new TextDecoder().decode(answer.body)) as { error?: string; message?: string };
    code = parsed.error;
    message = `${parsed.error ?? message}: ${parsed.message ?? ""}`.trim();
  } catch {
    // not JSON
  }
  throw new ClientExit(answerExit(answer.status, code), message);
}

function checkKey(key: string): string {
  if (key === "") throw new UsageError("the key must not be empty");
  if (key === "." || key === "..") throw new UsageError(`the key '${key}' has no /kv/{key} path; read and write it with kv txn`);
  return key;
}

/** A value as JSON: text when it is valid UTF-8, else {"base64": ...}. */

function print(conn: Connection, json: unknown, text: string): void {
  printLine(conn.json ? JSON.stringify(json) : text);
}

/** `--consistency`: one of the three modes (the server would refuse anything else with 400 too). */
function consistency(value: string | undefined): ReadConsistency | undefined {
  if (value === undefined || value === "linearizable" || value === "lease" || value === "stale") return value;
  throw new UsageError(`--consistency must be linearizable, lease or stale, got '${value}'`);
}

/** `--if-version N` of put and del: a compare-and-set (`?ifVersion=N`). */
const ifVersionArg = {
  "if-version": {
    type: "string",
    description: "Only if the key's version is N (0: only if absent); otherwise nothing changes and it exits 2 (version_mismatch)",
    valueHint: "N",
  },
} as const;

/** `kv put`, `kv del` and `kv txn`'s `--idempotency-key`. */
export const idempotencyKeyArg = {
  "idempotency-key": {
    type: "string",
    description:
      "Send the write under this Idempotency-Key (default: a new one each run). Resending a write whose outcome was unknown (exit 3) under the key it printed applies it at most once",
    valueHint: "KEY",
  },
} as const;

/** The key of `--idempotency-key`: 1 to 256 visible ASCII characters (what an HTTP header carries as it is). */
export function idempotencyKeyOf(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  // Quoted as JSON: a key with control characters must not reach the terminal as they are.
  if (text.length > 256 || !isVisibleAscii(text)) throw new UsageError(`--idempotency-key: ${JSON.stringify(text)} is not 1 to 256 visible ASCII characters`);
  return text;
}

function ifVersionOf(text: string | undefined): number | undefined {
  return text === undefined ? undefined : parseIntFlag("if-version", text, 0, Number.MAX_SAFE_INTEGER);
}

const putCommand = defineCommand({
  meta: { name: "put", description: "Write VALUE (or standard input, with - or no VALUE) under KEY" },
  args: {
    key: { type: "positional", required: true, description: "The key" },
    value: { type: "positional", required: false, description: "The value; - or nothing reads standard input" },
    lease: { type: "string", description: "Attach the key to this lease (its id); a lease that does not exist is refused (exit 2) and nothing is written", valueHint: "ID" },
    ...ifVersionArg,
    ...idempotencyKeyArg,
    ...connectionArgs,
  },
  async run({ args }) {
    const conn = connection(args);
    const lease = args.lease === undefined ? undefined : parseIntFlag("lease", args.lease, 1, Number.MAX_SAFE_INTEGER);
    const ifVersion = ifVersionOf(args["if-version"]);
    const idempotencyKey = idempotencyKeyOf(args["idempotency-key"]);
    const value =
      args.value === undefined || args.value === "-" ? await readStandardInput() : new TextEncoder().encode(args.value);
    const options = { ...(lease === undefined ? {} : { lease }), ...(ifVersion === undefined ? {} : { ifVersion }), ...(idempotencyKey === undefined ? {} : { idempotencyKey }) };
    const { version } = await call(() => conn.client.put(checkKey(args.key), value, options));
    print(conn, { key: args.key, version }, `OK ${args.key} version ${version}`);
  },
});

const consistencyArg = {
  consistency: { type: "string", description: "linearizable (default), lease or stale", valueHint: "MODE" },
} as const;

const getCommand = defineCommand({
  meta: { name: "get", description: "Print the value under KEY (exit 1 when absent)" },
  args: { key: { type: "positional", required: true, description: "The key" }, ...consistencyArg, ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const mode = consistency(args.consistency);
    const entry = await call(() => conn.client.get(checkKey(args.key), mode === undefined ? {} : { consistency: mode }));
    if (entry === null) throw new ClientExit(1, "not_found: no value is stored under this key");
    if (conn.json) print(conn, { key: args.key, value: jsonValue(entry.bytes), version: entry.version }, "");
    else printBytes(entry.bytes);
  },
});

const delCommand = defineCommand({
  meta: { name: "del", description: "Delete KEY (exit 1 when it was absent), or with --prefix every key starting with KEY" },
  args: {
    key: { type: "positional", required: true, description: "The key (with --prefix: the prefix; '' for every key)" },
    prefix: {
      type: "boolean",
      description:
        "Delete every key starting with KEY, 1,000 at a time, each batch at one version; prints how many went and exits 0, whether or not any were there (on a failure midway, how many went before it: run it again for the rest). Takes neither --if-version nor --idempotency-key. Needs every member on 0.9.0 or later",
    },
    ...ifVersionArg,
    ...idempotencyKeyArg,
    ...connectionArgs,
  },
  async run({ args }) {
    const conn = connection(args);
    if (args.prefix === true) {
      if (args["if-version"] !== undefined || args["idempotency-key"] !== undefined) {
        throw new UsageError("--prefix takes neither --if-version nor --idempotency-key (each batch is sent under a key of its own)");
      }
      const prefix = args.key;
      let deletedSoFar = 0;
      let result: Awaited<ReturnType<typeof conn.client.deletePrefix>>;
      try {
        // `kv del '' --prefix` is explicit already (the key given, and --prefix).
        result = await conn.client.deletePrefix(prefix, { all: prefix === "", onProgress: (deleted) => (deletedSoFar = deleted) });
      } catch (error) {
        // Say what went before the failure, and that running the command again is the way on: a
        // batch whose outcome is unknown needs no resending (found in a black-box review: the
        // advice was an --idempotency-key that --prefix refuses, and nothing said 20,000 keys had gone).
        try {
          exitFor(error);
        } catch (exit) {
          if (!(exit instanceof ClientExit)) throw exit;
          // Neither the library's advice to resend under the batch's key nor the CLI's flag applies here.
          const message = exit.message.replace(/ \(kv: --idempotency-key [^)]*\)$/, "").replace(/; resend it with Idempotency-Key \S+ to apply it at most once/, "");
          // A refusal of the first batch (exit 2: upgrade_required, say) is not passed by running again.
          if (deletedSoFar === 0 && exit.exitCode !== 3) throw new ClientExit(exit.exitCode, message);
          const unknown = exit.exitCode === 3 ? " (besides any of the batch whose outcome is unknown)" : "";
          throw new ClientExit(
            exit.exitCode,
            `${message}\nkv: ${deletedSoFar} ${deletedSoFar === 1 ? "key" : "keys"} under ${JSON.stringify(prefix)} deleted before this${unknown}; run the command again to delete the rest`,
          );
        }
      }
      print(conn, { prefix, deleted: result.deleted, version: result.version }, `deleted ${result.deleted} ${result.deleted === 1 ? "key" : "keys"} under ${JSON.stringify(prefix)}`);
      return;
    }
    const ifVersion = ifVersionOf(args["if-version"]);
    const idempotencyKey = idempotencyKeyOf(args["idempotency-key"]);
    const options = { ...(ifVersion === undefined ? {} : { ifVersion }), ...(idempotencyKey === undefined ? {} : { idempotencyKey }) };
    const result = await call(() => conn.client.delete(checkKey(args.key), options));
    print(conn, { key: args.key, ...result }, result.deleted ? `deleted ${args.key}` : `${args.key} was not there`);
    if (!result.deleted) throw new ClientExit(1, "");
  },
});

const listCommand = defineCommand({
  meta: { name: "list", description: "List the keys (and values) under PREFIX, in key order" },
  args: {
    prefix: { type: "positional", required: false, description: "Only keys starting with this (default: all)" },
    limit: { type: "string", description: "At most this many keys (default: all)", valueHint: "N" },
    "keys-only": { type: "boolean", description: "Print the keys only, one a line (--json: [{key, version}])" },
    ...consistencyArg,
    ...connectionArgs,
  },
  async run({ args }) {
    const conn = connection(args);
    const limit = args.limit === undefined ? Number.POSITIVE_INFINITY : parseIntFlag("limit", args.limit, 1, 1_000_000_000);
    const mode = consistency(args.consistency);
    const items: { key: string; value: string | { base64: string }; version: number }[] = [];
    let more = false;
    await call(async () => {
      for await (const page of conn.client.list(args.prefix ?? "", { limit, ...(mode === undefined ? {} : { consistency: mode }) })) {
        for (const item of page.items) items.push({ key: item.key, value: jsonValue(item.bytes), version: item.version });
        more = page.more;
      }
    });
    // Said apart from the listing (stdout stays the keys, or the JSON array): a cut one looked whole (found in a review).
    // Only a listing the limit stopped: a node also says `more` of a page its bytes bound ended, with
    // nothing after it (found in a review: a whole listing of large values was called cut).
    if (more && items.length >= limit) console.error(`kv: more keys under ${JSON.stringify(args.prefix ?? "")} than --limit ${limit}: listed the first ${items.length}`);
    const keysOnly = args["keys-only"] === true;
    if (conn.json) {
      print(conn, keysOnly ? items.map(({ key, version }) => ({ key, version })) : items, "");
      return;
    }
    for (const item of items) printLine(keysOnly ? item.key : `${item.key}\t${typeof item.value === "string" ? item.value : `base64:${item.value.base64}`}`);
  },
});

/**
 * Asks every endpoint for its /status (without redirects); undefined where none came, with `error`
 * saying why and `refused` when the node answered with an error (a 401 without the token).
 */
async function statuses(conn: Connection): Promise<{ endpoint: string; status: NodeStatus | undefined; error?: string; refused?: boolean; code?: string }[]> {
  return Promise.all(
    conn.client.endpoints.map(async (endpoint) => {
      try {
        return { endpoint, status: await conn.client.statusOf(endpoint) };
      } catch (error) {
        if (!(error instanceof KvClientError)) throw error;
        if (error.status === 0) return { endpoint, status: undefined, error: error.message, code: error.code };
        return { endpoint, status: undefined, error: `HTTP ${error.status}: ${error.message}`, refused: true };
      }
    }),
  );
}

const statusCommand = defineCommand({
  meta: { name: "status", description: "Show each endpoint's role, term, leader and indexes" },
  args: { ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const all = await statuses(conn);
    if (conn.json) {
      print(conn, all, "");
    } else {
      for (const { endpoint, status, error, refused } of all) {
        printLine(
          status === undefined
            ? `${endpoint}  ${refused === true ? "refused" : "unreachable"} (${error})`
            : `${endpoint}  node ${status.id}  ${(status.removed === true ? "removed" : status.role).padEnd(9)} term ${status.term}  leader ${status.leaderId}  commit ${status.commitIndex}  applied ${status.appliedIndex}${status.version === undefined ? "" : `  release ${status.version}`}`,
        );
      }
    }
    // An answer that refused (a 401) is the caller's to fix, not an outage: exit 2 as for any refused request.
    const refused = all.find((s) => s.refused === true);
    if (all.every((s) => s.status === undefined)) {
      if (refused !== undefined) throw new ClientExit(2, `no endpoint served the status: ${refused.endpoint} refused it (${refused.error})`);
      refuseUnlessTrusted(all.map((s) => s.code), "the status");
      throw new ClientExit(3, "no endpoint answered");
    }
    // As etcdctl's endpoint status: a script that checks every node learns that one did not answer.
    const silent = all.filter((s) => s.status === undefined && s.refused !== true);
    const refusing = all.filter((s) => s.refused === true);
    if (silent.length > 0 || refusing.length > 0) {
      const said = [
        ...(silent.length === 0 ? [] : [`${silent.length} of ${all.length} endpoints did not answer: ${silent.map((s) => s.endpoint).join(", ")}`]),
        ...(refusing.length === 0 ? [] : [`${refusing.length} of ${all.length} refused the status: ${refusing.map((s) => `${s.endpoint} (${s.error})`).join(", ")}`]),
      ];
      throw new ClientExit(refused === undefined ? 3 : 2, said.join("; "));
    }
  },
});

const membersCommand = defineCommand({
  meta: { name: "members", description: "List the cluster's members as the first answering endpoint knows them" },
  args: { ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const status = await call(() => conn.client.status());
    if (conn.json) {
      print(conn, status.members.map((member) => ({ ...member, leader: member.id === status.leaderId })), "");
      return;
    }
    for (const member of status.members) {
      const role = member.id === status.leaderId ? "leader" : "";
      printLine(`${member.id}\t${member.peerUrl}\t${member.httpUrl ?? "-"}\t${role}`.trimEnd());
    }
  },
});

const leaderTransferCommand = defineCommand({
  meta: { name: "transfer", description: "Hand leadership to node N (--to) or to the most caught-up voter" },
  args: { to: { type: "string", description: "The node to hand over to (default: the most caught-up voter)", valueHint: "N" }, ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const to = args.to === undefined ? undefined : parseIntFlag("to", args.to, 1, 1_000_000);
    const result = await call(() => conn.client.transferLeadership(to));
    const moved =
      result.leaderId === result.previousLeaderId
        ? `node ${result.leaderId} leads already`
        : result.leaderId === 0
          ? `node ${result.previousLeaderId} stepped down; no new leader was known when it answered (an election was under way): see kv status`
          : `leadership moved from node ${result.previousLeaderId} to node ${result.leaderId}`;
    print(conn, result, moved);
  },
});

const leaderCommand = defineCommand({
  meta: { name: "leader", description: "Leadership commands" },
  subCommands: { transfer: leaderTransferCommand },
});

/** Prints a configuration: one member a line (id, role, peer URL, client URL), the leader marked. */
function printMembers(conn: Connection, view: MembersView): void {
  if (conn.json) return print(conn, view, "");
  for (const member of view.members) {
    const role = `${member.role ?? "-"}${member.id === view.leaderId ? ",leader" : ""}`;
    printLine(`${member.id}\t${role}\t${member.peerUrl}\t${member.httpUrl ?? "-"}`);
  }
}

/** Runs one membership change and prints the configuration after it (409 conf_change_pending: exit 2). */
async function memberRequest(conn: Connection, change: (membership: KvClient["membership"]) => Promise<MembersView>): Promise<void> {
  printMembers(conn, await call(() => change(conn.client.membership)));
}

const idArg = { id: { type: "positional", required: true, description: "The member's node id" } } as const;

const memberCommand = defineCommand({
  meta: { name: "member", description: "Membership: list, add (as a learner, promoted once caught up), remove, promote" },
  subCommands: {
    list: defineCommand({
      meta: { name: "list", description: "The configuration as the first answering endpoint applied it" },
      args: { ...connectionArgs },
      async run({ args }) {
        const conn = connection(args);
        printMembers(conn, await call(() => conn.client.members()));
      },
    }),
    add: defineCommand({
      meta: { name: "add", description: "Add node ID, reached at PEER_URL, as a learner (then start it on an empty data dir with kv serve --id ID --join URL --advertise-peer PEER_URL: without --join it would found a cluster of its own)" },
      args: {
        ...idArg,
        peerUrl: { type: "positional", required: true, description: "Its peer URL, e.g. http://127.0.0.1:5004" },
        "cluster-token": {
          type: "string",
          description: "The cluster's --cluster-token (default $KV_CLUSTER_TOKEN): a cluster with one adds a member only with proof of it, which is sent, never the token",
          valueHint: "TOKEN",
        },
        "cluster-token-file": { type: "string", description: "Read the cluster token from this file (trailing newline ignored)", valueHint: "FILE" },
        ...connectionArgs,
      },
      async run({ args }) {
        const id = parseIntFlag("id", args.id, 1, 1_000_000, "ID");
        const clusterToken = readSecret("cluster-token", args["cluster-token"], args["cluster-token-file"], "KV_CLUSTER_TOKEN");
        await memberRequest(connection(args), (membership) => membership.add({ id, peerUrl: args.peerUrl, ...(clusterToken === undefined ? {} : { clusterToken }) }));
      },
    }),
    remove: defineCommand({
      meta: { name: "remove", description: "Remove node ID (the leader itself hands over first)" },
      args: { ...idArg, ...connectionArgs },
      async run({ args }) {
        const id = parseIntFlag("id", args.id, 1, 1_000_000, "ID");
        await memberRequest(connection(args), (membership) => membership.remove(id));
      },
    }),
    promote: defineCommand({
      meta: { name: "promote", description: "Make learner ID a voter now" },
      args: { ...idArg, ...connectionArgs },
      async run({ args }) {
        const id = parseIntFlag("id", args.id, 1, 1_000_000, "ID");
        await memberRequest(connection(args), (membership) => membership.promote(id));
      },
    }),
  },
});

/** The client commands, by name, for the top-level CLI. */
export const clientCommands = {
  member: memberCommand,
  leader: leaderCommand,
  put: putCommand,
  get: getCommand,
  del: delCommand,
  list: listCommand,
  status: statusCommand,
  members: membersCommand,
};
