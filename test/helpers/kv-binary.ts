// Shared by the integration suites: the command that runs the built executable, built once if missing.
import { existsSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dir, "..", "..");

/** `[path to dist/kv]` (or $KV_BIN), building it first when it is not there yet. */
export function kvCommand(): string[] {
  const bin = process.env.KV_BIN ?? join(root, "dist", "kv");
  if (!existsSync(bin)) {
    const build = Bun.spawnSync([process.execPath, "build.ts"], { cwd: root, stdout: "inherit", stderr: "inherit" });
    if (build.exitCode !== 0) throw new Error("could not build dist/kv");
  }
  return [bin];
}

/**
 * Runs `kv ...` (the built executable) to completion and returns its exit code and output. A runner
 * still alive in `finally` (it hung, or the test failed mid-run) gets SIGTERM, so it kills its own
 * nodes, then SIGKILL if it does not exit within 10 s.
 */
export async function runKv(args: string[]): Promise<{ code: number; out: string }> {
  const proc = Bun.spawn([...kvCommand(), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  try {
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    const code = await proc.exited;
    return { code, out: out + err };
  } finally {
    if (proc.exitCode === null) {
      proc.kill("SIGTERM");
      const exited = await Promise.race([proc.exited.then(() => true), Bun.sleep(10_000).then(() => false)]);
      if (!exited) proc.kill("SIGKILL");
    }
  }
}

/**
 * Runs the built executable with `args` (and `stdin`, if given, on its standard input) and returns its
 * exit code with standard output and standard error apart; kills it by pid when done, pass or fail.
 */
export async function runKvCommand(args: string[], stdin?: string): Promise<{ code: number; out: string; err: string }> {
  const proc = Bun.spawn([...kvCommand(), ...args], { stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin), stdout: "pipe", stderr: "pipe" });
  try {
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    return { code: await proc.exited, out, err };
  } finally {
    proc.kill("SIGKILL");
  }
}
