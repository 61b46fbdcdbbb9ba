/**
 * Logs refusals without letting a stream of them flood the log: the first line of each kind at
 * once, then at most one per `intervalMs`, saying how many were not logged in between (peer calls
 * refused: src/transport/connect-transport.ts; client requests refused: src/http/http-handler.ts).
 */
export function createRateLimitedLog<Kind>(
  log: (line: string) => void,
  intervalMs: number,
  /** What is counted, in the plural ("calls", "requests"). */
  what: string,
  nowMs: () => number = () => performance.now(),
): (kind: Kind, line: string | (() => string)) => void {
  const lastLoggedMs = new Map<Kind, number>();
  const suppressed = new Map<Kind, number>();
  return (kind, line) => {
    const now = nowMs();
    const last = lastLoggedMs.get(kind);
    if (last !== undefined && now - last < intervalMs) {
      suppressed.set(kind, (suppressed.get(kind) ?? 0) + 1);
      return;
    }
    const skipped = suppressed.get(kind) ?? 0;
    lastLoggedMs.set(kind, now);
    suppressed.set(kind, 0);
    // A line given as a function is built only when it is logged (a flood of refusals pays for none of the rest).
    const text = typeof line === "function" ? line() : line;
    log(skipped === 0 ? text : `${text} (and ${skipped} more ${what} of the same kind since the last such line)`);
  };
}
