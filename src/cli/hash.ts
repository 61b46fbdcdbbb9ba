import { defineCommand } from "citty";
import { compareReplicas, type HashAnswer } from "../client/index.ts";
import { ClientExit, connection, connectionArgs, refuseUnlessTrusted } from "./client.ts";
import { printLine } from "./output.ts";
import { parseIntFlag } from "./usage-error.ts";

/** Default `--timeout-ms`: hashing reads the whole state, a few seconds for a few hundred MB. */
const HASH_TIMEOUT_MS_DEFAULT = 60_000;

/** What each verdict exits with: 0 every node agrees, 1 two diverged, 3 not every node could be compared (2 when every node refused). */
const EXITS = { consistent: 0, diverged: 1, incomparable: 3 } as const;

/**
 * `kv hash`: every endpoint's `GET /hash` (its state's SHA-256 at its applied index), compared
 * (src/client/replicas.ts), as etcd's `endpoint hashkv`. Nodes behind the others are asked again
 * until all stand at one index or `--timeout-ms` passes.
 */
export const hashCommand = defineCommand({
  meta: {
    name: "hash",
    description: "Compare the nodes' state: each endpoint's SHA-256 of its rows at its applied index; exit 0 when all agree, 1 when two at one index differ, 2 when every node refused it (a 401), 3 when not every node could be compared",
  },
  args: {
    ...connectionArgs,
    "timeout-ms": { type: "string", description: `How long the whole comparison may take, each node's hash included (default ${HASH_TIMEOUT_MS_DEFAULT}: a node hashes about 100 MB a second)`, valueHint: "MS" },
  },
  async run({ args }) {
    const timeoutText = args["timeout-ms"] ?? String(HASH_TIMEOUT_MS_DEFAULT);
    const conn = connection({ ...args, "timeout-ms": timeoutText });
    const timeoutMs = parseIntFlag("timeout-ms", timeoutText, 1, 600_000);
    const check = await compareReplicas(conn.client, { timeoutMs });
    if (conn.json) {
      printLine(JSON.stringify({ verdict: check.verdict, message: check.message, answers: check.answers }));
    } else {
      for (const answer of check.answers) printLine(answerLine(answer));
      printLine(`${check.verdict}: ${check.message}`);
    }
    // Refused everywhere (a 401: the token is wrong or missing) is the caller's to fix: 2, as for any refused request.
    const refused = check.answers.length > 0 && check.answers.every((answer) => answer.status !== undefined && answer.status >= 400 && answer.status < 500 && answer.status !== 429);
    if (check.answers.every((answer) => answer.hash === undefined)) refuseUnlessTrusted(check.answers.map((answer) => answer.code), "the hashes");
    if (check.verdict !== "consistent") throw new ClientExit(refused ? 2 : EXITS[check.verdict], "");
    // The others agree, but not every node was compared: a check that must cover them all fails.
    if (check.answers.some((answer) => answer.hash === undefined)) throw new ClientExit(3, "");
  },
});

function answerLine(answer: HashAnswer): string {
  if (answer.hash === undefined) return `${answer.endpoint}  no hash (${answer.error ?? "no answer"})`;
  const { index, term, hash, rows, bytes } = answer.hash;
  return `${answer.endpoint}  index ${index}  term ${term}  ${hash}  rows ${rows}  bytes ${bytes}`;
}
