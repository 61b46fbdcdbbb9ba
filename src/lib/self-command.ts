/**
 * The command line that runs this very program again: `[execPath]` when compiled (the executable
 * holds the script), `[bun, ...runtime flags, script]` from source.
 */
export function selfCommand(): string[] {
  const compiled = Bun.main.startsWith("/$bunfs/") || Bun.main.startsWith("B:/~BUN/");
  return compiled ? [process.execPath] : [process.execPath, ...process.execArgv, process.argv[1] as string];
}
