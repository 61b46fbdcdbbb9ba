/** Structured logs: one JSON object per line on stderr (time, level, node, event, fields). */
export type LogLevel = "debug" | "info" | "warn" | "error";

const levelRank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface Logger {
  log(level: LogLevel, event: string, fields?: Record<string, unknown>): void;
}

export function createLogger(nodeId: number, minLevel: LogLevel = "info"): Logger {
  return {
    log(level, event, fields = {}) {
      if (levelRank[level] < levelRank[minLevel]) return;
      process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, node: nodeId, event, ...fields })}\n`);
    },
  };
}
