import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { defineCommand } from "citty";
import { ChaosCluster, selfCommand } from "../chaos/cluster.ts";
import { runElection } from "../chaos/election.ts";
import { runFailover } from "../chaos/failover.ts";
import { parseIntFlag } from "./usage-error.ts";

const commonArgs = {
  "base-port": {
    type: "string",
    description: "Use the classic layout: peers on PORT..PORT+2, HTTP on PORT+3000.. (default: ports the OS picks, behind proxies)",
    valueHint: "PORT",
  },
  "keep-data": { type: "boolean", description: "Keep the nodes' data and logs even on success" },
} as const;

/**
 * Runs `scenario` against a fresh 3-node cluster of copies of this executable in a temporary data
 * dir; kills every process it started (success, failure or Ctrl-C) and exits 0 on success, 1 when
 * an anomaly was found (keeping the logs), 2 on a usage error.
 */
async function runScenario(
  title: string,
  basePortFlag: string | undefined,
  keepData: boolean,
  scenario: (cluster: ChaosCluster, print: (line: string) => void) => Promise<boolean>,
): Promise<never> {
  const basePort = basePortFlag === undefined ? undefined : parseIntFlag("base-port", basePortFlag, 1, 62_000);
  const baseDir = mkdtempSync(join(tmpdir(), "kv-chaos-"));
  const cluster = new ChaosCluster({ size: 3, command: selfCommand(), baseDir, basePort });
  const print = (line: string) => console.log(line);
  const cleanup = async (code: number) => {
    await cluster.stop();
    if (code === 0 && !keepData) rmSync(baseDir, { recursive: true, force: true });
    else console.log(`Node data and logs kept in ${baseDir} (node-N.log, node-N/)`);
    process.exit(code);
  };
  process.on("SIGINT", () => void cleanup(130));
  process.on("SIGTERM", () => void cleanup(143));
  print(`=== Chaos Test: ${title} ===`);
  let ok = false;
  try {
    ok = await scenario(cluster, print);
  } catch (error) {
    console.log(`❌ ERROR: ${error instanceof Error ? error.message : String(error)}`);
  }
  return cleanup(ok ? 0 : 1);
}

const failoverCommand = defineCommand({
  meta: { name: "failover", description: "Kill the leader during writes and prove no acknowledged write was lost" },
  args: {
    keys: { type: "string", description: "Keys written in each batch, before and after the kill (default 50)", valueHint: "N" },
    concurrency: { type: "string", description: "Concurrent writers (default 4)", valueHint: "N" },
    ...commonArgs,
  },
  async run({ args }) {
    const keys = args.keys === undefined ? 50 : parseIntFlag("keys", args.keys, 1, 1_000_000);
    const concurrency = args.concurrency === undefined ? 4 : parseIntFlag("concurrency", args.concurrency, 1, 1_000);
    await runScenario("Leader Failover During Writes", args["base-port"], args["keep-data"] === true, async (cluster, print) => {
      const result = await runFailover(cluster, { keys, concurrency, print });
      return result.ok;
    });
  },
});

const electionCommand = defineCommand({
  meta: { name: "election", description: "Write to every node during elections and prove at most one accepts" },
  args: {
    rounds: { type: "string", description: "Elections to provoke (default 5)", valueHint: "N" },
    ...commonArgs,
  },
  async run({ args }) {
    const rounds = args.rounds === undefined ? 5 : parseIntFlag("rounds", args.rounds, 1, 10_000);
    await runScenario("Writes During Leader Election", args["base-port"], args["keep-data"] === true, async (cluster, print) => {
      const result = await runElection(cluster, { rounds, print });
      return result.ok;
    });
  },
});

/** `kv chaos`: the cluster tests itself. */
export const chaosCommand = defineCommand({
  meta: { name: "chaos", description: "Run a chaos scenario against a fresh local 3-node cluster of this executable" },
  subCommands: { failover: failoverCommand, election: electionCommand },
});
