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
