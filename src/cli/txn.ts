import { defineCommand } from "citty";
import { ClientExit, connection, connectionArgs, fail, idempotencyKeyArg, idempotencyKeyOf, send } from "./client.ts";
import { UsageError } from "./usage-error.ts";
import { printLine, readStandardInput } from "./output.ts";
import { existsSync, statSync } from "node:fs";

/** The answer is always JSON: `--json` would change nothing, so `kv txn` does not take it. */
const { json: _json, ...txnConnectionArgs } = connectionArgs;

/** The largest transaction file `kv txn` reads: far above what a node takes (it answers 413 first). */
const txnFileBytesMax = 64 * 1024 * 1024;

/**
 * `kv txn [FILE | -]`: sends the transaction in FILE (or standard input) to `POST /txn`, through
 * whichever endpoint answers (redirects to the leader followed, as `kv put`), and prints the JSON
 * answer. A transaction that may write is sent with an `Idempotency-Key` of its own, so resending it
 * to another endpoint after one stopped answering cannot apply it twice; one with no put or delete
 * in either branch goes without one, retried as a read. Exits 0 when the comparisons held (`succeeded`), 1
 * when they did not and the failure branch ran (the answer is printed either way), 2 on a usage
 * error or a refused request (a lease not found among them), 3 when no endpoint answered or the
 * outcome is unknown.
 */
export const txnCommand = defineCommand({
  meta: { name: "txn", description: "Run a transaction (POST /txn JSON) from FILE or standard input; exit 1 when its comparisons failed" },
  args: {
    file: { type: "positional", required: false, description: 'JSON {"compare": [...], "success": [...], "failure": [...]}; - or nothing reads standard input' },
    ...idempotencyKeyArg,
    ...txnConnectionArgs,
  },
  async run({ args }) {
    const conn = connection(args);
    const idempotencyKey = idempotencyKeyOf(args["idempotency-key"]);
    const body = await readTxn(args.file);
    // One that may write goes with a key of its own (or --idempotency-key's); one that only reads
    // goes without (the node keeps no session for it) and is retried as a read.
    const readsOnly = onlyReads(body);
    const headers: Record<string, string> = readsOnly
      ? { "content-type": "application/json" }
      : { "content-type": "application/json", "idempotency-key": idempotencyKey ?? `kv-txn-${crypto.randomUUID()}` };
    const answer = await send(conn, "POST", "/txn", body, headers, readsOnly);
    if (answer.status === 404) {
      // Exit 1 says the failure branch ran: a transaction refused for a lease that does not exist
      // (404 lease_not_found, nothing applied) is a refused request, exit 2.
      try {
        fail(answer);
      } catch (error) {
        throw error instanceof ClientExit ? new ClientExit(2, error.message) : error;
      }
    }
    if (answer.status !== 200) fail(answer);
    const text = new TextDecoder().decode(answer.body);
    let succeeded: unknown;
    try {
      succeeded = (JSON.parse(text) as { succeeded?: unknown }).succeeded;
    } catch {
      throw new ClientExit(3, `the node's answer is not JSON: ${text.slice(0, 200)}`);
    }
    printLine(text);
    if (succeeded !== true) throw new ClientExit(1, "");
  },
});

async function readTxn(file: string | undefined): Promise<Uint8Array> {
  if (file === undefined || file === "-") return await readStandardInput();
  const handle = Bun.file(file);
  if (existsSync(file) && !statSync(file).isFile()) throw new UsageError(`cannot read '${file}': it is not a file`);
  if (!(await handle.exists())) throw new UsageError(`cannot read '${file}': no such file`);
  if (handle.size > txnFileBytesMax) throw new UsageError(`'${file}' is ${handle.size} bytes; a transaction is at most ${txnFileBytesMax}`);
  try {
    return await handle.bytes();
  } catch (error) {
    throw new UsageError(`cannot read '${file}': ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** True when `body` is a transaction whose branches hold gets only; anything unreadable may write (the node judges it). */
export function onlyReads(body: Uint8Array): boolean {
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder().decode(body));
  } catch {
    return false;
  }
  if (typeof parsed !== "object" || parsed === null) return false;
  const { success = [], failure = [] } = parsed as { success?: unknown; failure?: unknown };
  if (!Array.isArray(success) || !Array.isArray(failure)) return false;
  return [...success, ...failure].every((op: unknown) => typeof op === "object" && op !== null && Object.keys(op).length === 1 && "get" in op);
}
