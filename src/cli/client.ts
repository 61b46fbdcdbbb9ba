import { defineCommand } from "citty";
import { parseIntFlag, UsageError } from "./usage-error.ts";

/**
 * The client commands (`kv put|get|del|list|status|members`): talk to a cluster over its HTTP API,
 * following redirects to the leader and moving to the next endpoint when one does not answer.
 * Exit codes a script can rely on: 0 ok/found, 1 not found, 2 usage or a refused request,
 * 3 unavailable (no endpoint answered, no leader, or a write's outcome is unknown).
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
  "timeout-ms": { type: "string", description: "How long to wait for each answer (default 5000)", valueHint: "MS" },
  "auth-token": { type: "string", description: "Bearer token for a cluster started with --auth-token (default $KV_AUTH_TOKEN)", valueHint: "TOKEN" },
} as const;

/** Where and how a client command talks to the cluster. */
export interface Connection {
  readonly endpoints: string[];
  readonly json: boolean;
  readonly timeoutMs: number;
  readonly authToken: string | undefined;
}

/** The connection the flags (or $KV_ENDPOINTS, $KV_AUTH_TOKEN) describe; `UsageError` for bad ones. */
export function connection(args: { endpoints?: string; json?: boolean; "timeout-ms"?: string; "auth-token"?: string }): Connection {
  const list = (args.endpoints ?? process.env.KV_ENDPOINTS ?? defaultEndpoints)
    .split(",")
    .map((e) => e.trim().replace(/\/+$/, ""))
    .filter((e) => e !== "");
  for (const endpoint of list) {
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      throw new UsageError(`--endpoints: '${endpoint}' is not a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new UsageError(`--endpoints: '${endpoint}' must be http(s)`);
  }
  if (list.length === 0) throw new UsageError("--endpoints names no endpoint");
  return {
    endpoints: list,
    json: args.json === true,
    timeoutMs: args["timeout-ms"] === undefined ? 5_000 : parseIntFlag("timeout-ms", args["timeout-ms"], 1, 600_000),
    authToken: args["auth-token"] ?? process.env.KV_AUTH_TOKEN,
  };
}

/** An HTTP answer, its body read. */
export interface Answer {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Uint8Array;
}

const redirectsMax = 5;

/**
 * Sends one request: to each endpoint in turn until one answers, following 307s to the leader and
 * waiting out a brief "no leader" (an election) within the timeout.
 */
export async function send(conn: Connection, method: string, path: string, body?: Uint8Array, headers: Record<string, string> = {}): Promise<Answer> {
  const deadline = performance.now() + conn.timeoutMs;
  const failures: string[] = [];
  for (;;) {
    for (const endpoint of conn.endpoints) {
      let url = `${endpoint}${path}`;
      for (let hop = 0; hop <= redirectsMax; hop++) {
        let response: Response;
        try {
          response = await fetch(url, {
            method,
            body,
            redirect: "manual",
            headers: { ...headers, ...(conn.authToken === undefined ? {} : { authorization: `Bearer ${conn.authToken}` }) },
            signal: AbortSignal.timeout(Math.max(1, deadline - performance.now())),
          });
        } catch (error) {
          failures.push(`${new URL(url).origin}: ${error instanceof Error ? error.message : String(error)}`);
          break; // this endpoint is down: try the next one
        }
        const answer = { status: response.status, headers: response.headers, body: new Uint8Array(await response.arrayBuffer()) };
        const location = response.headers.get("location");
        if (response.status === 307 && location !== null) {
          url = location;
          continue;
        }
        const refusal = response.status === 503 ? errorCode(answer) : undefined;
        if (refusal === "no_leader" || refusal === "proposal_dropped") {
          // Nothing applied (nothing was proposed, or what was proposed never will be): safe to retry.
          failures.push(`${new URL(url).origin}: ${refusal === "no_leader" ? "no leader" : "leadership changed; retrying"}`);
          break;
        }
        return answer;
      }
    }
    if (performance.now() >= deadline) throw new ClientExit(3, `no endpoint could serve the request: ${failures.slice(-3).join("; ")}`);
    await Bun.sleep(Math.min(100, Math.max(1, deadline - performance.now()))); // back off while an election settles
  }
}

function errorCode(answer: Answer): string | undefined {
  try {
    return (JSON.parse(new TextDecoder().decode(answer.body)) as { error?: string }).error;
  } catch {
    return undefined;
  }
}

function parseJson<T>(answer: Answer): T {
  return JSON.parse(new TextDecoder().decode(answer.body)) as T;
}

/** Turns an error answer into the exit it means. */
export function fail(answer: Answer): never {
  let message = `HTTP ${answer.status}`;
  try {
    const parsed = parseJson<{ error?: string; message?: string }>(answer);
    message = `${parsed.error ?? message}: ${parsed.message ?? ""}`.trim();
  } catch {
    // not JSON
  }
  if (answer.status === 404) throw new ClientExit(1, message);
  if (answer.status >= 500) throw new ClientExit(3, message);
  throw new ClientExit(2, message);
}

function keyPath(key: string): string {
  if (key === "") throw new UsageError("the key must not be empty");
  return `/kv/${encodeURIComponent(key)}`;
}

/** A value as JSON: text when it is valid UTF-8, else {"base64": ...}. */
function jsonValue(bytes: Uint8Array): string | { base64: string } {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return { base64: Buffer.from(bytes).toString("base64") };
  }
}

function print(conn: Connection, json: unknown, text: string): void {
  console.log(conn.json ? JSON.stringify(json) : text);
}

const putCommand = defineCommand({
  meta: { name: "put", description: "Write VALUE (or standard input, with - or no VALUE) under KEY" },
  args: {
    key: { type: "positional", required: true, description: "The key" },
    value: { type: "positional", required: false, description: "The value; - or nothing reads standard input" },
    ...connectionArgs,
  },
  async run({ args }) {
    const conn = connection(args);
    const value =
      args.value === undefined || args.value === "-" ? new Uint8Array(await Bun.stdin.arrayBuffer()) : new TextEncoder().encode(args.value);
    const answer = await send(conn, "PUT", keyPath(args.key), value);
    if (answer.status !== 200) fail(answer);
    const { version } = parseJson<{ version: number }>(answer);
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
    const query = args.consistency === undefined ? "" : `?consistency=${encodeURIComponent(args.consistency)}`;
    const answer = await send(conn, "GET", `${keyPath(args.key)}${query}`);
    if (answer.status !== 200) fail(answer);
    const version = Number(answer.headers.get("x-kv-version"));
    if (conn.json) print(conn, { key: args.key, value: jsonValue(answer.body), version }, "");
    else process.stdout.write(answer.body);
  },
});

const delCommand = defineCommand({
  meta: { name: "del", description: "Delete KEY (exit 1 when it was absent)" },
  args: { key: { type: "positional", required: true, description: "The key" }, ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const answer = await send(conn, "DELETE", keyPath(args.key));
    if (answer.status !== 200) fail(answer);
    const result = parseJson<{ deleted: boolean; version: number }>(answer);
    print(conn, { key: args.key, ...result }, result.deleted ? `deleted ${args.key}` : `${args.key} was not there`);
    if (!result.deleted) throw new ClientExit(1, "");
  },
});

interface ListPage {
  items: { key: string; value: string | { base64: string }; version: number }[];
  more: boolean;
}

const listCommand = defineCommand({
  meta: { name: "list", description: "List the keys (and values) under PREFIX, in key order" },
  args: {
    prefix: { type: "positional", required: false, description: "Only keys starting with this (default: all)" },
    limit: { type: "string", description: "At most this many keys (default: all)", valueHint: "N" },
    ...consistencyArg,
    ...connectionArgs,
  },
  async run({ args }) {
    const conn = connection(args);
    const limit = args.limit === undefined ? Number.POSITIVE_INFINITY : parseIntFlag("limit", args.limit, 1, 1_000_000_000);
    const items: ListPage["items"] = [];
    let after: string | undefined;
    for (;;) {
      const query = new URLSearchParams({ prefix: args.prefix ?? "", limit: String(Math.min(1000, limit - items.length)) });
      if (after !== undefined) query.set("after", after);
      if (args.consistency !== undefined) query.set("consistency", args.consistency);
      const answer = await send(conn, "GET", `/kv?${query}`);
      if (answer.status !== 200) fail(answer);
      const page = parseJson<ListPage>(answer);
      items.push(...page.items);
      after = page.items[page.items.length - 1]?.key;
      if (!page.more || after === undefined || items.length >= limit) break;
    }
    if (conn.json) {
      print(conn, items, "");
      return;
    }
    for (const item of items) console.log(`${item.key}\t${typeof item.value === "string" ? item.value : `base64:${item.value.base64}`}`);
  },
});

interface StatusView {
  id: number;
  role: string;
  term: number;
  leaderId: number;
  commitIndex: number;
  appliedIndex: number;
  members: { id: number; peerUrl: string; httpUrl: string | null }[];
}

/** Asks every endpoint for its /status (without redirects); undefined where none came. */
async function statuses(conn: Connection): Promise<{ endpoint: string; status: StatusView | undefined; error?: string }[]> {
  return Promise.all(
    conn.endpoints.map(async (endpoint) => {
      try {
        const response = await fetch(`${endpoint}/status`, {
          signal: AbortSignal.timeout(conn.timeoutMs),
          headers: conn.authToken === undefined ? {} : { authorization: `Bearer ${conn.authToken}` },
        });
        if (!response.ok) return { endpoint, status: undefined, error: `HTTP ${response.status}` };
        return { endpoint, status: (await response.json()) as StatusView };
      } catch (error) {
        return { endpoint, status: undefined, error: error instanceof Error ? error.message : String(error) };
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
      for (const { endpoint, status, error } of all) {
        console.log(
          status === undefined
            ? `${endpoint}  unreachable (${error})`
            : `${endpoint}  node ${status.id}  ${status.role.padEnd(9)} term ${status.term}  leader ${status.leaderId}  commit ${status.commitIndex}  applied ${status.appliedIndex}`,
        );
      }
    }
    if (all.every((s) => s.status === undefined)) throw new ClientExit(3, "no endpoint answered");
  },
});

const membersCommand = defineCommand({
  meta: { name: "members", description: "List the cluster's members as the first answering endpoint knows them" },
  args: { ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const answer = await send(conn, "GET", "/status");
    if (answer.status !== 200) fail(answer);
    const status = parseJson<StatusView>(answer);
    if (conn.json) {
      print(conn, status.members, "");
      return;
    }
    for (const member of status.members) {
      const role = member.id === status.leaderId ? "leader" : "";
      console.log(`${member.id}\t${member.peerUrl}\t${member.httpUrl ?? "-"}\t${role}`.trimEnd());
    }
  },
});

const leaderTransferCommand = defineCommand({
  meta: { name: "transfer", description: "Hand leadership to node N (--to) or to the most caught-up voter" },
  args: { to: { type: "string", description: "The node to hand over to (default: the most caught-up voter)", valueHint: "N" }, ...connectionArgs },
  async run({ args }) {
    const conn = connection(args);
    const query = args.to === undefined ? "" : `?to=${parseIntFlag("to", args.to, 1, 1_000_000)}`;
    const answer = await send(conn, "POST", `/leader/transfer${query}`);
    if (answer.status !== 200) fail(answer);
    const result = parseJson<{ leaderId: number; previousLeaderId: number }>(answer);
    print(conn, result, `leadership moved from node ${result.previousLeaderId} to node ${result.leaderId}`);
  },
});

const leaderCommand = defineCommand({
  meta: { name: "leader", description: "Leadership commands" },
  subCommands: { transfer: leaderTransferCommand },
});

interface MembersAnswer {
  members: { id: number; peerUrl: string; httpUrl: string | null; role: string | null }[];
  leaderId: number;
  configIndex: number;
}

/** Prints a configuration: one member a line (id, role, peer URL, client URL), the leader marked. */
function printMembers(conn: Connection, view: MembersAnswer): void {
  if (conn.json) return print(conn, view, "");
  for (const member of view.members) {
    const role = `${member.role ?? "-"}${member.id === view.leaderId ? ",leader" : ""}`;
    console.log(`${member.id}\t${role}\t${member.peerUrl}\t${member.httpUrl ?? "-"}`);
  }
}

/** Runs one membership request; an answer's error becomes the exit it means (409 conf_change_pending: 2). */
async function memberRequest(conn: Connection, method: string, path: string, body?: unknown): Promise<void> {
  const answer = await send(conn, method, path, body === undefined ? undefined : new TextEncoder().encode(JSON.stringify(body)));
  if (answer.status !== 200) fail(answer);
  printMembers(conn, parseJson<MembersAnswer>(answer));
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
        const answer = await send(conn, "GET", "/members");
        if (answer.status !== 200) fail(answer);
        printMembers(conn, parseJson<MembersAnswer>(answer));
      },
    }),
    add: defineCommand({
      meta: { name: "add", description: "Add node ID, reached at PEER_URL, as a learner (then start it with kv serve --id ID on an empty data dir)" },
      args: {
        ...idArg,
        peerUrl: { type: "positional", required: true, description: "Its peer URL, e.g. http://127.0.0.1:5004" },
        ...connectionArgs,
      },
      async run({ args }) {
        await memberRequest(connection(args), "POST", "/members", { id: parseIntFlag("id", args.id, 1, 1_000_000), peerUrl: args.peerUrl });
      },
    }),
    remove: defineCommand({
      meta: { name: "remove", description: "Remove node ID (the leader itself hands over first)" },
      args: { ...idArg, ...connectionArgs },
      async run({ args }) {
        await memberRequest(connection(args), "DELETE", `/members/${parseIntFlag("id", args.id, 1, 1_000_000)}`);
      },
    }),
    promote: defineCommand({
      meta: { name: "promote", description: "Make learner ID a voter now" },
      args: { ...idArg, ...connectionArgs },
      async run({ args }) {
        await memberRequest(connection(args), "POST", `/members/${parseIntFlag("id", args.id, 1, 1_000_000)}/promote`);
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
