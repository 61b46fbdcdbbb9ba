// Builds dist/kv: one self-contained executable (bun build --compile) from src/cli/main.ts.
// The storage's writer thread (src/storage/storage-thread.ts, a Worker that imports our modules) is
// a second entry point, so `new Worker(new URL("./storage-thread.ts", import.meta.url))` in
// src/storage/threaded-storage.ts finds it inside the executable.
// It does not read a stray .env or bunfig.toml from the directory it runs in: a database server must not.
import { mkdirSync } from "node:fs";

const outfile = process.argv[2] ?? "dist/kv";
mkdirSync("dist", { recursive: true });
const started = performance.now();
const proc = Bun.spawnSync(
  [
    process.execPath,
    "build",
    "--compile",
    "--minify",
    "--bytecode",
    "--format=esm",
    "--no-compile-autoload-dotenv",
    "--no-compile-autoload-bunfig",
    "src/cli/main.ts",
    "src/storage/storage-thread.ts",
    "--outfile",
    outfile,
  ],
  { stdout: "inherit", stderr: "inherit" },
);
if (proc.exitCode !== 0) {
  console.error(`build failed (exit ${proc.exitCode})`);
  process.exit(proc.exitCode ?? 1);
}
console.log(`built ${outfile} in ${Math.round(performance.now() - started)} ms`);
