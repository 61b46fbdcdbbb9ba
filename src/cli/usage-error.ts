import { readFileSync } from "node:fs";
import { isAddressOnly } from "../lib/address-url.ts";
import { parseDuration } from "../lib/duration.ts";
import { leaseTtlMsMax } from "../kv/leases.ts";
import { secretProblem } from "../lib/secret.ts";

/** A mistake in how the command was called: one line on stderr and exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A secret from the file `--flag` names, its trailing line break dropped; a usage error when it cannot be read. */
export function readSecretFile(flag: string, file: string): string {
  try {
    return readFileSync(file, "utf8").replace(/[\r\n]+$/, "");
  } catch (error) {
    throw new UsageError(`--${flag}: cannot read '${file}': ${error instanceof Error ? error.message : String(error)}`);
  }
}

/**
 * A secret from its flag, its file flag, or the environment, in that order; giving both the flag
 * and the file is a usage error, as is a secret that is too short or not header-safe.
 */
export function readSecret(flag: string, value: string | undefined, file: string | undefined, envName: string): string | undefined {
  if (value !== undefined && file !== undefined) throw new UsageError(`give --${flag} or --${flag}-file, not both`);
  let secret: string | undefined;
  let source: string;
  if (file !== undefined) {
    secret = readSecretFile(`${flag}-file`, file);
    source = `the file given by --${flag}-file`;
  } else if (value !== undefined) {
    secret = value;
    source = `--${flag}`;
  } else {
    secret = process.env[envName];
    source = envName;
    if (secret === "") secret = undefined; // an empty variable is an unset one
  }
  if (secret === undefined) return undefined;
  const problem = secretProblem(secret);
  if (problem !== undefined) throw new UsageError(`the secret in ${source} ${problem}`);
  return secret;
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

/** `--data-dir DIR` as given, refused when empty (or spaces alone): it named no directory at all. */
export function parseDataDir(value: string): string {
  if (value.trim() === "") throw new UsageError("--data-dir needs a directory");
  return value;
}

/** Parses a whole number within [min, max]. */
export function parseIntFlag(flag: string, value: string | undefined, min: number, max: number, named = `--${flag}`): number {
  // Decimal digits only: Number() also took 1e1, 0x2, +2 and ' 3' (found in review).
  const n = value !== undefined && /^-?[0-9]+$/.test(value) ? Number(value) : Number.NaN;
  if (value === undefined || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`${named} must be a whole number from ${min} to ${max}, got '${value}'`);
  }
  return n;
}

/** `--flag 10m`, `90s`, `1h30m`, `500ms` in whole ms, from `minMs` to `maxMs`; a `UsageError` otherwise. */
export function parseDurationFlag(flag: string, value: string | undefined, minMs: number, maxMs: number): number {
  const parsed = parseDuration(value ?? "");
  const totalMs = parsed === undefined ? Number.NaN : Math.round(parsed);
  if (!(totalMs >= minMs && totalMs <= maxMs)) {
    // Examples within the range only (found in a black-box review: 10m and 1h offered for 100ms to 2m).
    const examples = [["10m", 600_000], ["90s", 90_000], ["1h", 3_600_000], ["10s", 10_000], ["500ms", 500]].filter(([, ms]) => (ms as number) >= minMs && (ms as number) <= maxMs).map(([text]) => text as string);
    const such = examples.length === 0 ? "" : ` such as ${examples.slice(0, 3).join(", ")}`;
    throw new UsageError(`--${flag} must be a duration from ${formatMs(minMs)} to ${formatMs(maxMs)}${such}, got '${value}'`);
  }
  return totalMs;
}

/** A flag in milliseconds (`--x-ms`): a whole number of ms (`1500`), or a duration as `parseDurationFlag` reads (`1.5s`, `10m`). */
export function parseMsFlag(flag: string, value: string | undefined, minMs: number, maxMs: number): number {
  if (value !== undefined && /^\s*\d+\s*$/.test(value)) return parseIntFlag(flag, value, minMs, maxMs);
  return parseDurationFlag(flag, value, minMs, maxMs);
}

/**
 * A lease's TTL (`kv lease grant TTL`, `--ttl` of `kv lock` and `kv elect`): a duration with its unit
 * (10s, 1m, 500ms), 1 ms to 8760 h. A bare number is refused: etcdctl's `lease grant 60` and `lock
 * --ttl 60` mean seconds, and read as milliseconds it was silently a 480 ms lease (found in review,
 * for lease grant, and in a black-box review, for lock and elect).
 */
export function parseTtl(what: string, text: string): number {
  if (/^\s*\d+\s*$/.test(text)) throw new UsageError(`${what} needs a unit: ${text.trim()}s for ${text.trim()} seconds, or ${text.trim()}ms`);
  const parsed = parseDuration(text);
  const ttlMs = parsed === undefined ? Number.NaN : Math.round(parsed);
  if (!(ttlMs >= 1 && ttlMs <= leaseTtlMsMax)) throw new UsageError(`${what} must be a duration from 1ms to 8760h (10s, 1m, 500ms), got '${text}'`);
  return ttlMs;
}

function formatMs(ms: number): string {
  for (const [unit, unitMs] of [["h", 3_600_000], ["m", 60_000], ["s", 1_000]] as const) if (ms % unitMs === 0) return `${ms / unitMs}${unit}`;
  return `${ms}ms`;
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
    // A node serves its peers at its root: with a path, every peer call was a 404 and no leader was
    // ever elected (found in a black-box review), as --advertise-http and --join already refuse.
    if (!isAddressOnly(parsed, url)) {
      throw new UsageError(`--cluster: '${url}' must be only a scheme, host and port (http(s)://host:port), without a user, path, query or fragment`);
    }
    if (peers.has(id)) throw new UsageError(`--cluster names node ${id} twice`);
    const peerUrl = url.replace(/\/+$/, "");
    // Two ids at one address: one's calls would reach the other (as POST /members refuses). Port 0
    // (the OS picks) is an address for no one but this node.
    const sharing = parsed.port === "0" ? undefined : [...peers].find(([, other]) => other === peerUrl)?.[0];
    if (sharing !== undefined) throw new UsageError(`--cluster gives nodes ${sharing} and ${id} one peer URL, ${peerUrl}: each needs its own`);
    peers.set(id, peerUrl);
  }
  return peers;
}

/** The zero-config local cluster: node N has peer port 500N and HTTP port 800N. */
export function localCluster(size = 3, basePeerPort = 5001): Map<number, string> {
  return new Map(Array.from({ length: size }, (_, i) => [i + 1, `http://127.0.0.1:${basePeerPort + i}`] as [number, string]));
}
