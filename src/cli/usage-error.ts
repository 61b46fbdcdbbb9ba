/** A mistake in how the command was called: one line on stderr and exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Parses a `host:port` listen address; port 0 lets the OS choose. */
export function parseHostPort(flag: string, value: string): { hostname: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(value);
  const port = match === null ? NaN : Number(match[2]);
  if (match === null || !(port >= 0 && port <= 65535)) {
    throw new UsageError(`--${flag} must be host:port (e.g. 127.0.0.1:8001), got '${value}'`);
  }
  return { hostname: (match[1] as string).replace(/^\[|\]$/g, ""), port };
}

/** Parses a whole number within [min, max]. */
export function parseIntFlag(flag: string, value: string | undefined, min: number, max: number): number {
  const n = Number(value);
  if (value === undefined || value.trim() === "" || !Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}, got '${value}'`);
  }
  return n;
}

/** Parses a duration such as `10s`, `500ms` or `1.5s` (a bare number is seconds) into milliseconds within [minMs, maxMs]. */
export function parseDurationFlagMs(flag: string, value: string | undefined, minMs: number, maxMs: number): number {
  const match = value === undefined ? null : /^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$/.exec(value);
  const ms = match === null ? NaN : Math.round(Number(match[1]) * (match[2] === "ms" ? 1 : 1_000));
  if (!(ms >= minMs && ms <= maxMs)) {
    throw new UsageError(`--${flag} must be a duration from ${minMs} ms to ${maxMs / 1_000} s, such as 10s or 500ms, got '${value}'`);
  }
  return ms;
}

/** Parses `1=http://127.0.0.1:5001,2=...` into id → peer URL. */
export function parseCluster(value: string): Map<number, string> {
  const peers = new Map<number, string>();
  for (const part of value.split(",")) {
    const match = /^\s*(\d+)\s*=\s*(\S+)\s*$/.exec(part);
    if (match === null) throw new UsageError(`--cluster entries must be id=url, got '${part}'`);
    const id = Number(match[1]);
    const url = match[2] as string;
    if (!(id >= 1 && id <= 1_000_000)) throw new UsageError(`--cluster ids must be positive, got '${match[1]}'`);
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new UsageError(`--cluster: '${url}' is not a URL`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new UsageError(`--cluster: '${url}' must be http(s)`);
    if (peers.has(id)) throw new UsageError(`--cluster names node ${id} twice`);
    peers.set(id, url.replace(/\/+$/, ""));
  }
  return peers;
}

/** The zero-config local cluster: node N has peer port 500N and HTTP port 800N. */
export function localCluster(size = 3, basePeerPort = 5001): Map<number, string> {
  return new Map(Array.from({ length: size }, (_, i) => [i + 1, `http://127.0.0.1:${basePeerPort + i}`] as [number, string]));
}
