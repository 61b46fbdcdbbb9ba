#!/usr/bin/env bun
// kv's command line: the only reader of argv and the environment.
import { defineCommand, renderUsage, runCommand, type ArgsDef, type CommandDef } from "citty";
import packageJson from "../../package.json" with { type: "json" };
import { isDiskFull } from "../lib/disk-full.ts";
import { reexecWithRuntimeTuning } from "./runtime-tuning.ts";
import { argumentsNotUtf8 } from "./raw-arguments.ts";
import { exitAfterOutput, exitOnOutputError, printLine } from "./output.ts";
import type { ClientExit } from "./client.ts";
import { UsageError } from "./usage-error.ts";
import { DAMAGED_DATA_DIR_ADVICE } from "../storage/kv-storage.ts";

/** A subcommand, loaded when it is named (or listed by `--help`). */
type LazyCommand = () => Promise<CommandDef<ArgsDef>>;

/** `load`'s command, as citty's general type. */
function lazy<T>(load: () => Promise<T>): LazyCommand {
  return () => load() as unknown as Promise<CommandDef<ArgsDef>>;
}

/**
 * Every subcommand is imported only when it runs (or `--help` lists it): `kv get` and
 * `kv --version` do not evaluate the server, chaos and bench modules (Elysia, the peer transport,
 * the report's JSX). Measured on the built executable (20 runs of each build, alternating, on a
 * shared 2-core machine): `kv --version` median 79-115 ms eager, 48-66 ms lazy; `kv get` against
 * one local node 118-125 ms eager, 71-76 ms lazy.
 */
const subCommands: Record<string, LazyCommand> = {
  serve: lazy(() => import("./serve.ts").then((m) => m.serveCommand)),
  chaos: lazy(() => import("./chaos.ts").then((m) => m.chaosCommand)),
  bench: lazy(() => import("./bench.ts").then((m) => m.benchCommand)),
  snapshot: lazy(() => import("./snapshot.ts").then((m) => m.snapshotCommand)),
  defrag: lazy(() => import("./defrag.ts").then((m) => m.defragCommand)),
  member: lazy(() => import("./client.ts").then((m) => m.clientCommands.member)),
  leader: lazy(() => import("./client.ts").then((m) => m.clientCommands.leader)),
  put: lazy(() => import("./client.ts").then((m) => m.clientCommands.put)),
  get: lazy(() => import("./client.ts").then((m) => m.clientCommands.get)),
  del: lazy(() => import("./client.ts").then((m) => m.clientCommands.del)),
  list: lazy(() => import("./client.ts").then((m) => m.clientCommands.list)),
  status: lazy(() => import("./client.ts").then((m) => m.clientCommands.status)),
  members: lazy(() => import("./client.ts").then((m) => m.clientCommands.members)),
  hash: lazy(() => import("./hash.ts").then((m) => m.hashCommand)),
  health: lazy(() => import("./health.ts").then((m) => m.healthCommand)),
  txn: lazy(() => import("./txn.ts").then((m) => m.txnCommand)),
  lock: lazy(() => import("./lock.ts").then((m) => m.lockCommand)),
  elect: lazy(() => import("./lock.ts").then((m) => m.electCommand)),
  watch: lazy(() => import("./watch.ts").then((m) => m.watchCommand)),
  lease: lazy(() => import("./lease.ts").then((m) => m.leaseCommand)),
};

const root = defineCommand({
  meta: {
    name: "kv",
    version: packageJson.version,
    description: "A replicated key-value store on Raft that proves itself with chaos",
  },
  subCommands,
});

/** Finds the command named by the leading words of argv (loading it) and the arguments left for it. */
async function resolve(argv: string[]): Promise<{ command: CommandDef<ArgsDef>; parent: CommandDef<ArgsDef> | undefined; path: string[]; rest: string[] }> {
  let command = root as unknown as CommandDef<ArgsDef>;
  let parent: CommandDef<ArgsDef> | undefined;
  const path: string[] = ["kv"];
  let rest = argv;
  for (;;) {
    const word = rest[0];
    const children = command.subCommands as Record<string, CommandDef<ArgsDef> | LazyCommand> | undefined;
    if (children === undefined || word === undefined || word.startsWith("-")) break;
    const entry = Object.hasOwn(children, word) ? children[word] : undefined;
    if (entry === undefined) throw new UsageError(`unknown command '${word}' (try: ${path.join(" ")} --help)`);
    const child = typeof entry === "function" ? await entry() : entry;
    parent = command;
    command = child;
    path.push(word);
    rest = rest.slice(1);
  }
  return { command, parent, path, rest };
}

/**
 * Commands whose words after `--` are a command of their own to run (`kv lock NAME -- CMD ...`);
 * for the others they are arguments like any (`kv put -- -key value`).
 */
const runsACommand = new Set(["kv lock"]);

/**
 * Refuses flags the command does not define and more arguments than it takes, both of which citty
 * would silently ignore (found in review: `kv put greeting hello world` stored "hello" and exited 0,
 * `kv del a b` deleted a alone).
 */
function checkFlags(command: CommandDef<ArgsDef>, path: string[], argv: string[]): void {
  const defined = (command.args ?? {}) as ArgsDef;
  const positionals = Object.entries(defined).filter(([, def]) => def.type === "positional");
  let words = 0;
  const known = new Set<string>();
  for (const [name, def] of Object.entries(defined)) {
    known.add(name);
    const aliases = "alias" in def && def.alias !== undefined ? ([] as string[]).concat(def.alias) : [];
    for (const alias of aliases) known.add(alias);
    if (def.type === "boolean") known.add(`no-${name}`);
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === "--") {
      if (!runsACommand.has(path.join(" "))) words += argv.length - i - 1;
      break;
    }
    if (!arg.startsWith("-") || arg === "-") {
      words++;
      continue;
    }
    const name = arg.replace(/^--?/, "").split("=")[0] as string;
    if (!known.has(name)) {
      // `kv put k -5`: a value that starts with a dash goes after `--`, which ends the flags.
      const valueHint = positionals.length > 0 && /^-[0-9.]/.test(arg) ? `; to pass a value that starts with '-', put '--' before it` : "";
      throw new UsageError(`unknown flag '${arg}' for '${path.join(" ")}' (see ${path.join(" ")} --help)${valueHint}`);
    }
    const def = defined[name] ?? Object.values(defined).find((d) => "alias" in d && ([] as string[]).concat(d.alias ?? []).includes(name));
    // citty reads any value of a switch but `false` as true: `--metrics-open=no` opened /metrics
    // (found in a black-box review). A switch takes no value, or exactly true or false.
    if ((def === undefined || def.type === "boolean") && arg.includes("=")) {
      const value = arg.slice(arg.indexOf("=") + 1);
      if (def === undefined) throw new UsageError(`flag '${arg}' takes no value`);
      if (value !== "true" && value !== "false") throw new UsageError(`flag '${arg}': a switch is given alone, or as --${name}=true or --${name}=false`);
    }
    if (def?.type === "string" && !arg.includes("=")) {
      const value = argv[i + 1];
      if (value === undefined) throw new UsageError(`flag '${arg}' needs a value`);
      i++;
    }
  }
  if (words > positionals.length) {
    const takes = positionals.length === 0 ? "no arguments" : positionals.map(([name, def]) => ("required" in def && def.required === true ? name.toUpperCase() : `[${name.toUpperCase()}]`)).join(" ");
    const hint = positionals.some(([name]) => name === "value") ? " (quote a value that has spaces)" : "";
    throw new UsageError(`'${path.join(" ")}' takes ${takes}, got ${words} argument${words === 1 ? "" : "s"}${hint}`);
  }
}

/**
 * citty colours help unless NO_COLOR is exactly "1" (or CI, TEST, TERM=dumb): strip the ANSI codes
 * when standard output is not a terminal, or when NO_COLOR is set to any non-empty value (the
 * convention's rule), so `kv serve --help | less` and logs stay plain.
 */
function withoutColourUnlessTerminal(text: string): string {
  const colour = process.stdout.isTTY === true && (process.env.NO_COLOR ?? "") === "";
  // citty pads every row of its table to the longest: a line of `kv serve --help` ran to 359
  // characters of trailing spaces, and wrapped badly (found in a black-box walkthrough).
  return (colour ? text : text.replace(/\x1b\[[0-9;]*m/g, "")).replace(/[ \t]+$/gm, "");
}

async function resolveMeta(command: CommandDef<ArgsDef>) {
  const meta = command.meta;
  return typeof meta === "function" ? await meta() : await meta;
}

/** Commands that run for long under load: worth re-executing once for the runtime's settings. */
const longRunning = new Set(["serve", "bench", "chaos"]);

/** Runs the CLI: exit 0 on success, 1 on failure, 2 on a usage error. */
export async function main(argv: string[]): Promise<void> {
  exitOnOutputError();
  try {
    // Keys, values and paths are UTF-8 text: an argument that is not would reach the command
    // changed (each bad byte as U+FFFD), and two different keys could become one.
    const [notUtf8] = argumentsNotUtf8(argv.length);
    if (notUtf8 !== undefined) {
      const commandsOwn = argv.includes("--") && notUtf8.position > argv.indexOf("--") + 1;
      // A flag's value (--data-dir X, --endpoints=X) is no key or value.
      const previous = argv[notUtf8.position - 2] ?? "";
      const flagValue = notUtf8.text.startsWith("--") || (previous.startsWith("-") && !previous.includes("="));
      const why = commandsOwn
        ? "kv passes a command's arguments as UTF-8 text"
        : flagValue
          ? "flags and their values must be UTF-8 text"
          : "keys must be UTF-8 text, and a value of any bytes goes on standard input (kv put KEY -)";
      throw new UsageError(`argument ${notUtf8.position} (${JSON.stringify(notUtf8.text)}) is not valid UTF-8: ${why}`);
    }
    const { command, parent, path, rest } = await resolve(argv);
    // Words after `--` belong to a command kv runs (`kv lock NAME -- CMD -h`), not to kv.
    const own = rest.includes("--") ? rest.slice(0, rest.indexOf("--")) : rest;
    if (own.includes("--help") || own.includes("-h") || (command.run === undefined && rest.length === 0)) {
      // citty names a command after its parent's name: give it the whole path so usage reads "kv chaos pause".
      const named = parent === undefined ? undefined : { ...parent, meta: { ...(await resolveMeta(parent)), name: path.slice(0, -1).join(" ") } };
      // Through standard output's error handling: help that cannot be written exits 4 (it exited 0).
      printLine(withoutColourUnlessTerminal(await renderUsage(command, named)));
      return;
    }
    if (path.length === 1 && (rest[0] === "--version" || rest[0] === "-v")) {
      printLine(packageJson.version);
      return;
    }
    if (command.run === undefined) throw new UsageError(`'${path.join(" ")}' needs a subcommand (see ${path.join(" ")} --help)`);
    checkFlags(command, path, rest);
    // Long-running commands run with the runtime tuned for throughput (see runtime-tuning.ts).
    if (longRunning.has(path[1] ?? "")) reexecWithRuntimeTuning(argv);
    await runCommand(command, { rawArgs: rest });
  } catch (error) {
    // By name: client.ts (where the class is) is loaded only by the commands that throw it.
    if (error instanceof Error && error.name === "ClientExit") {
      if (error.message !== "") console.error(`kv: ${error.message}`);
      await exitAfterOutput((error as ClientExit).exitCode);
    }
    if (error instanceof UsageError || (error instanceof Error && error.name === "CLIError")) {
      console.error(`kv: ${error.message}`);
      process.exit(2);
    }
    // Damaged or unusable storage is an operating error: say what and where, in one line.
    if (error instanceof Error && error.name === "StorageError") {
      console.error(`kv: cannot start: ${error.message}`);
      if ((error as { code?: unknown }).code === "corrupt") console.error(`kv: ${DAMAGED_DATA_DIR_ADVICE}`);
      process.exit(1);
    }
    // A full disk is an operating error too (serve waits it out; this is the net under the rest).
    if (isDiskFull(error)) {
      console.error(`kv: the disk is full: ${error instanceof Error ? error.message : String(error)}`);
      process.exit(1);
    }
    console.error(`kv: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  }
}

await main(process.argv.slice(2));
