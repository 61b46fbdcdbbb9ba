import { defineCommand } from "citty";
import type { WatchEvent } from "../client/index.ts";
import { jsonValue } from "../lib/json-value.ts";
import { ClientExit, connection, connectionArgs, exitFor } from "./client.ts";
import { interruption } from "./lock.ts";
import { parseIntFlag, UsageError } from "./usage-error.ts";
import { printLine } from "./output.ts";

/**
 * `kv watch KEY` / `kv watch --prefix P`: prints each change as it commits, through the client
 * library's watch (src/client/watch.ts), which resumes on the next endpoint when a stream breaks,
 * skipping nothing and giving nothing twice. One line a change, tab-separated as `kv list` prints:
 * `put KEY VERSION VALUE` (a value that is not UTF-8 as `base64:...`), `delete KEY VERSION REASON`
 * (`delete` or `lease_expired`), and with `--progress`, `progress VERSION`; `--json` prints one object
 * a line instead. Exit codes: 0 when interrupted (SIGINT, SIGTERM) or after `--count` changes, 2 on a
 * usage error or a refused watch (`compacted`: `--from-version` is older than every node's
 * history), 3 when no endpoint served it.
 */
export const watchCommand = defineCommand({
  meta: { name: "watch", description: "Print each change to KEY (or to the keys under --prefix) as it commits, until interrupted" },
  args: {
    key: { type: "positional", required: false, description: "The key to watch (or give --prefix)" },
    prefix: { type: "string", description: "Watch every key starting with this instead (an empty prefix watches all)", valueHint: "PREFIX" },
    "from-version": { type: "string", description: "Start with the changes at this version and later (default: those after now)", valueHint: "N" },
    count: { type: "string", description: "Exit 0 after this many changes", valueHint: "N" },
    progress: { type: "boolean", description: "Also print progress lines: every change up to VERSION was printed" },
    ...connectionArgs,
    "timeout-ms": { type: "string", description: "Give up (exit 3) when no endpoint has served the watch for this long (default 30000)", valueHint: "MS" },
  },
  async run({ args }) {
    if ((args.key === undefined) === (args.prefix === undefined)) throw new UsageError("give one KEY or --prefix P, not both or neither");
    if (args.key === "") throw new UsageError("the key must not be empty");
    const fromVersion = args["from-version"] === undefined ? undefined : parseIntFlag("from-version", args["from-version"], 1, Number.MAX_SAFE_INTEGER);
    const count = args.count === undefined ? undefined : parseIntFlag("count", args.count, 1, Number.MAX_SAFE_INTEGER);
    const conn = connection(args);
    // A watch runs until interrupted: its timeout bounds how long it goes unserved, not the command.
    const reconnectTimeoutMs = args["timeout-ms"] === undefined ? undefined : parseIntFlag("timeout-ms", args["timeout-ms"], 1, 600_000);
    const selector = args.key !== undefined ? { key: args.key } : { prefix: args.prefix ?? "" };
    const interrupted = interruption();
    let changes = 0;
    try {
      const events = conn.client.watch(selector, {
        signal: interrupted.signal,
        progress: args.progress === true,
        ...(reconnectTimeoutMs === undefined ? {} : { reconnectTimeoutMs }),
        ...(fromVersion === undefined ? {} : { fromVersion }),
      });
      for await (const event of events) {
        printLine(conn.json ? JSON.stringify(eventJson(event)) : eventLine(event));
        if (event.type !== "progress" && count !== undefined && ++changes >= count) break;
      }
    } catch (error) {
      if (!interrupted.signal.aborted) exitFor(error);
    } finally {
      interrupted.dispose();
    }
    if (count !== undefined && changes < count && !interrupted.signal.aborted) throw new ClientExit(3, `the watch ended after ${changes} of ${count} changes`);
  },
});

function eventJson(event: WatchEvent): unknown {
  switch (event.type) {
    case "put":
      return { type: "put", key: event.key, value: jsonValue(event.bytes), version: event.version };
    case "delete":
      return { type: "delete", key: event.key, version: event.version, reason: event.reason };
    case "progress":
      return { type: "progress", version: event.version };
  }
}

function eventLine(event: WatchEvent): string {
  switch (event.type) {
    case "put": {
      const value = jsonValue(event.bytes);
      return `put\t${event.key}\t${event.version}\t${typeof value === "string" ? value : `base64:${value.base64}`}`;
    }
    case "delete":
      return `delete\t${event.key}\t${event.version}\t${event.reason}`;
    case "progress":
      return `progress\t${event.version}`;
  }
}
