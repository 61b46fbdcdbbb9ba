/**
 * `kv snapshot save|status|restore`: backups of a cluster (`GET /snapshot`, format in
 * src/kv/backup-format.ts) and new clusters made from them (src/server/restore-snapshot.ts).
 * Exit codes: 0 ok, 1 a damaged file or a refused restore, 2 a usage error or a refused request,
 * 3 no endpoint could serve the snapshot.
 */
import { defineCommand } from "citty";
import { removeStaleTemps } from "../lib/stale-temps.ts";
import { closeSync, existsSync, fsyncSync, ftruncateSync, lstatSync, openSync, readSync, realpathSync, renameSync, rmSync, type Stats, statSync, writeSync } from "node:fs";
import { fsyncPath } from "../lib/fsync-path.ts";
import { basename, dirname, join } from "node:path";
import { BACKUP_MAGIC, BackupFormatError, type BackupSummary, verifyBackup } from "../kv/backup-format.ts";
import { RestoreError, restoreSnapshot } from "../server/restore-snapshot.ts";
import { authToken, caFile, ClientExit, connectionArgs, TLS_HINT } from "./client.ts";
import { redirectTarget, tlsFailure } from "../client/transport.ts";
import { parseCluster, parseDataDir, parseIntFlag, UsageError } from "./usage-error.ts";
import { printLine } from "./output.ts";
import { defaultListenHttp, isLoopbackHost } from "./serve-addresses.ts";
import { FailureTally } from "../client/failure-tally.ts";
import { normalizeEndpoints } from "../client/client.ts";
import { KvClientError } from "../client/errors.ts";

const defaultEndpoints = "http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003";
/** Redirects followed per endpoint (a node answers /snapshot itself; a proxy in front might not). */
const redirectsMax = 5;

/** The file's bytes, for `verifyBackup` and `restoreSnapshot`; a usage error when there is no such file. */
function fileSource(file: string): AsyncIterable<Uint8Array> {
  if (!existsSync(file)) throw new UsageError(`${file}: no such file`);
  if (!statSync(file).isFile()) throw new UsageError(`${file} is not a file (a backup is the one file kv snapshot save wrote)`);
  return Bun.file(file).stream();
}

/** Reads and verifies a backup file: exit 1, saying what is wrong, when it is damaged. */
async function verifyFile(file: string): Promise<BackupSummary> {
  try {
    return await verifyBackup(fileSource(file));
  } catch (error) {
    if (error instanceof BackupFormatError) throw new ClientExit(1, `${file} is not a usable backup: ${error.message}`);
    if (error instanceof UsageError) throw error;
    // A read that fails (EIO: a damaged disk, a special file): one line, not a stack (found in a black-box review).
    throw new ClientExit(1, `cannot read ${file}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function summaryJson(file: string, summary: BackupSummary) {
  const { header } = summary;
  return {
    file,
    formatVersion: summary.formatVersion,
    index: header.index,
    term: header.term,
    rows: summary.rowCount,
    keys: summary.keyCount,
    dataBytes: summary.dataBytes,
    fileBytes: summary.fileBytes,
    sha256: summary.sha256,
    stateHash: summary.stateHash,
    voters: header.voters,
    learners: header.learners,
    members: header.addresses,
    createdAt: new Date(header.createdAtMs).toISOString(),
    ...(header.source === undefined ? {} : { source: header.source }),
  };
}

function summaryText(file: string, summary: BackupSummary): string {
  const { header } = summary;
  const role = (id: number) => (header.learners.includes(id) ? "learner" : "voter");
  const members = header.addresses.length > 0 ? header.addresses.map((a) => `${a.id}=${a.peerUrl} (${role(a.id)})`).join(", ") : header.voters.join(",");
  const source = header.source;
  return [
    `${file}: kv snapshot, format version ${summary.formatVersion}, verified`,
    `index ${header.index}, term ${header.term}`,
    `${summary.keyCount} ${summary.keyCount === 1 ? "key" : "keys"} (${summary.rowCount} rows with sessions and other reserved rows), ${summary.dataBytes} bytes of keys and values`,
    `members: ${members}`,
    `file: ${summary.fileBytes} bytes, sha256 ${summary.sha256}`,
    `state hash ${summary.stateHash} (GET /hash at index ${header.index}; a cluster restored from it answers the same until it takes writes)`,
    `taken ${new Date(header.createdAtMs).toISOString()}${source?.nodeId === undefined ? "" : ` from node ${source.nodeId}`}${source?.clusterId === undefined ? "" : ` of cluster ${source.clusterId}`}`,
  ].join("\n");
}

/**
 * Fetches `GET /snapshot` from the first endpoint that serves it and writes the body to `fd`. When
 * none does for a reason that passes (none answers, 5xx such as 503 `no_leader` during an election,
 * 429, a stream cut short), it asks them all again until `timeoutMs` has passed since the first try
 * (it gave up at once: found in a black-box review, exit 3 within 0.14 s of an election).
 */
async function download(endpoints: readonly string[], authToken: string | undefined, timeoutMs: number, fd: number, ca: string[] | undefined): Promise<string> {
  // Each distinct failure once, with how often (an endpoint refusing alike every pass read three times: found in a black-box review).
  const failures = new FailureTally(3);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const untrusted = new Set<string>();
    const origin = await downloadOnce(endpoints, authToken, timeoutMs, fd, ca, failures, untrusted);
    if (origin !== undefined) return origin;
    // Every endpoint refused by its certificate: a setting no retry changes (found in a black-box
    // review: retried for the whole --timeout-ms, then exit 3 with no word of --cacert).
    if (untrusted.size === endpoints.length) throw new ClientExit(2, `no endpoint could be reached over TLS for the snapshot: ${failures.lines().join("; ")}${TLS_HINT}`);
    if (performance.now() + PASS_PAUSE_MS > deadline) break;
    await Bun.sleep(PASS_PAUSE_MS); // a pause between passes over the endpoints, not a wait for a condition
  }
  throw new ClientExit(3, `no endpoint could serve the snapshot within ${timeoutMs} ms: ${failures.lines().join("; ")}`);
}

/** Between two passes of `download` over the endpoints. */
const PASS_PAUSE_MS = 250;

/**
 * One pass of `download` over the endpoints: the origin that served it, or undefined (each failure
 * noted in `failures`, and each endpoint whose certificate was not trusted added to `untrusted`).
 */
async function downloadOnce(
  endpoints: readonly string[],
  authToken: string | undefined,
  timeoutMs: number,
  fd: number,
  ca: string[] | undefined,
  failures: FailureTally,
  untrusted: Set<string>,
): Promise<string | undefined> {
  for (const endpoint of endpoints) {
    let url = `${endpoint}/snapshot`;
    for (let hop = 0; hop <= redirectsMax; hop++) {
      // The timeout bounds the wait for the answer's headers; the body may take as long as it takes.
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      let response: Response;
      try {
        response = await fetch(url, {
          redirect: "manual",
          headers: authToken === undefined ? {} : { authorization: `Bearer ${authToken}` },
          signal: abort.signal,
          ...(ca === undefined ? {} : { tls: { ca } }),
        });
      } catch (error) {
        clearTimeout(timer);
        failures.note(`${new URL(url).origin}: ${error instanceof Error ? error.message : String(error)}`);
        if (tlsFailure(error) === "certificate") untrusted.add(endpoint);
        break; // this endpoint is down: try the next one
      }
      clearTimeout(timer);
      const location = response.headers.get("location");
      if (response.status === 307 && location !== null) {
        // Only where the client library would follow it, the token along (see redirectTarget).
        const next = redirectTarget(url, location);
        await response.body?.cancel();
        if (typeof next === "string") {
          failures.note(`${new URL(url).origin}: ${next}`);
          break;
        }
        url = next.toString();
        continue;
      }
      if (response.status !== 200 || response.body === null) {
        const text = await response.text();
        let message = `HTTP ${response.status}`;
        try {
          const parsed = JSON.parse(text) as { error?: string; message?: string };
          message = `${parsed.error ?? message}: ${parsed.message ?? ""}`;
        } catch {
          // not JSON
        }
        if (response.status >= 500 || response.status === 429) {
          failures.note(`${new URL(url).origin}: ${message}`);
          break;
        }
        throw new ClientExit(2, `${new URL(url).origin} refused the snapshot: ${message}`);
      }
      // Written at explicit offsets from 0: a stream that broke midway leaves a file the next
      // endpoint's stream writes over from the start (after cutting it back to nothing).
      let fileBytes = 0;
      try {
        for await (const chunk of response.body) {
          let written = 0;
          try {
            while (written < chunk.byteLength) written += writeSync(fd, chunk, written, chunk.byteLength - written, fileBytes + written);
          } catch (error) {
            throw new LocalWriteError(error);
          }
          fileBytes += chunk.byteLength;
        }
      } catch (error) {
        // Our own file could not take it (a full disk): no stream to blame, nothing to retry.
        if (error instanceof LocalWriteError) throw error.cause;
        // A stream cut short (the node stopped midway): the next endpoint may serve it whole (it
        // gave up at once: found in a black-box review).
        failures.note(`${new URL(url).origin}: the snapshot stream broke after ${fileBytes} bytes (the node logs why, as "snapshot stream failed", when it cut it): ${error instanceof Error ? error.message : String(error)}`);
        ftruncateSync(fd, 0);
        break;
      }
      return new URL(url).origin;
    }
  }
  return undefined;
}

/**
 * The file a save writes for FILE: FILE, or the file a symbolic link there names. Exit 1 for what
 * is no file to replace: a directory, a device, a FIFO or a socket (found in a black-box review: a
 * save to `/dev/null`, a FIFO or `/dev/stdout` renamed its backup over them, as root over the
 * system's own), or a link that names nothing.
 */
function saveTarget(file: string): string {
  const cannot = (error: unknown) => new ClientExit(1, `cannot write ${file}: ${error instanceof Error ? error.message : String(error)} (a symbolic link is followed to the file it names); nothing saved`);
  let link: boolean;
  try {
    link = lstatSync(file).isSymbolicLink();
  } catch (error) {
    if ((error as { code?: unknown }).code === "ENOENT") return file; // a new file
    throw cannot(error);
  }
  let target: string;
  let stats: Stats;
  try {
    target = link ? realpathSync(file) : file;
    stats = statSync(target);
  } catch (error) {
    throw cannot(error); // a link that names nothing
  }
  if (stats.isDirectory()) throw new ClientExit(1, `cannot write ${file}: it is a directory; nothing saved`);
  if (!stats.isFile()) throw new ClientExit(1, `cannot write ${file}: it is not a regular file (a device, a FIFO or a socket), and a backup replaces a file; name a file; nothing saved`);
  return target;
}

/**
 * A save replaces FILE when it exists (a backup of the night before), but only a kv backup (or an
 * empty file): renamed over a node's own `kv.db`, a save left the node failing at every start,
 * its data dir lost (found in a black-box review). Exit 1, as a FILE that cannot be written.
 */
function refuseToReplaceOtherThanABackup(file: string): void {
  if (!existsSync(file) || statSync(file).size === 0) return;
  const head = Buffer.alloc(BACKUP_MAGIC.length);
  let fd: number | undefined;
  try {
    fd = openSync(file, "r");
    readSync(fd, head, 0, head.byteLength, 0);
  } catch (error) {
    throw new ClientExit(1, `cannot replace ${file}: ${error instanceof Error ? error.message : String(error)}; nothing saved`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (head.toString("latin1") !== BACKUP_MAGIC) {
    throw new ClientExit(1, `refusing to replace ${file}: it is not a kv backup (it does not start with ${BACKUP_MAGIC}); remove it or name another FILE; nothing saved`);
  }
}

const saveCommand = defineCommand({
  meta: { name: "save", description: "Save a consistent backup of the cluster to FILE (written aside, verified, then renamed into place)" },
  args: {
    file: { type: "positional", required: true, description: "Where to write the backup" },
    endpoints: { type: "string", description: `Comma-separated client URLs to ask, in order (default $KV_ENDPOINTS or ${defaultEndpoints})`, valueHint: "URLS" },
    "auth-token": { type: "string", description: "Bearer token for a cluster started with --auth-token (default $KV_AUTH_TOKEN)", valueHint: "TOKEN" },
    "auth-token-file": { type: "string", description: "Read the bearer token from this file (trailing newline ignored): a flag's value shows in ps", valueHint: "FILE" },
    "timeout-ms": { type: "string", description: "How long to wait for a node to start answering (default 10000)", valueHint: "MS" },
    json: { type: "boolean", description: "Print JSON instead of text" },
    cacert: connectionArgs.cacert,
  },
  async run({ args }) {
    const ca = caFile(args.cacert);
    const token = authToken(args);
    // Read as the client reads them: origins, a path refused (GET {path}/snapshot would be a 404).
    let endpoints: string[];
    try {
      endpoints = normalizeEndpoints(args.endpoints ?? process.env.KV_ENDPOINTS ?? defaultEndpoints);
    } catch (error) {
      if (!(error instanceof KvClientError)) throw error;
      throw new UsageError(`--endpoints: ${error.message}`);
    }
    const timeoutMs = args["timeout-ms"] === undefined ? 10_000 : parseIntFlag("timeout-ms", args["timeout-ms"], 1, 600_000);
    if (args.file === "") throw new UsageError("FILE must not be empty");
    // A symbolic link is followed: the backup replaces the file it names (found in a black-box
    // review: the link itself was replaced, and the file it named kept the old backup).
    const file = saveTarget(args.file);
    if (!existsSync(dirname(file)) || !statSync(dirname(file)).isDirectory()) throw new ClientExit(1, `cannot write ${args.file}: ${dirname(file)} is no directory; nothing saved`);
    refuseToReplaceOtherThanABackup(file);
    removeStaleTemps(dirname(file), `.${basename(file)}.partial-`);
    const temp = join(dirname(file), `.${basename(file)}.partial-${process.pid}`);
    let origin: string;
    let summary: BackupSummary;
    try {
      let fd: number;
      try {
        fd = openSync(temp, "w", 0o600);
      } catch (error) {
        throw cannotWrite(file, error);
      }
      try {
        origin = await download(endpoints, token, timeoutMs, fd, ca);
        fsyncSync(fd);
      } catch (error) {
        throw error instanceof ClientExit ? error : cannotWrite(file, error);
      } finally {
        closeSync(fd);
      }
      try {
        summary = await verifyBackup(Bun.file(temp).stream());
      } catch (error) {
        if (error instanceof BackupFormatError) throw new ClientExit(3, `the snapshot received from ${origin} does not verify, nothing saved: ${error.message}`);
        throw error;
      }
      try {
        renameSync(temp, file);
        fsyncPath(dirname(file));
      } catch (error) {
        throw cannotWrite(file, error);
      }
    } catch (error) {
      // Its own failure must not hide the one that sent it here (found in review: EROFS of the rm).
      try {
        rmSync(temp, { force: true });
      } catch {}
      throw error;
    }
    const json = { ...summaryJson(file, summary), from: origin };
    printLine(
      args.json === true
        ? JSON.stringify(json)
        : `saved ${file}: index ${summary.header.index}, term ${summary.header.term}, ${summary.keyCount} ${summary.keyCount === 1 ? "key" : "keys"}, ${summary.fileBytes} bytes, sha256 ${summary.sha256} (from ${origin})`,
    );
  },
});

/** A write to the local file failed, inside the download (told apart from the stream breaking). */
class LocalWriteError extends Error {
  constructor(override readonly cause: unknown) {
    super("local write failed");
  }
}

/** The exit for a backup file that could not be written: 1, saying which file and why (found in review: a stack trace). */
function cannotWrite(file: string, error: unknown): ClientExit {
  return new ClientExit(1, `cannot write ${file}: ${error instanceof Error ? error.message : String(error)}; nothing saved`);
}

const statusCommand = defineCommand({
  meta: { name: "status", description: "Verify a backup file and print what it holds (exit 1 when it is damaged)" },
  args: {
    file: { type: "positional", required: true, description: "The backup file" },
    json: { type: "boolean", description: "Print JSON instead of text" },
  },
  async run({ args }) {
    const summary = await verifyFile(args.file);
    printLine(args.json === true ? JSON.stringify(summaryJson(args.file, summary)) : summaryText(args.file, summary));
  },
});

const restoreCommand = defineCommand({
  meta: {
    name: "restore",
    description: "Make the data dir of one node of a NEW cluster from a backup (run once per node, same FILE and --cluster), then kv serve it",
  },
  args: {
    file: { type: "positional", required: true, description: "The backup file" },
    "data-dir": { type: "string", description: "The node's data dir to create (absent or empty)", valueHint: "DIR", required: true },
    id: { type: "string", description: "This node's id in the new cluster", valueHint: "N", required: true },
    cluster: { type: "string", description: "The new cluster's voters: 1=http://host:port,2=...", valueHint: "ID=URL,...", required: true },
    "cluster-id": {
      type: "string",
      description: "The new cluster's id, 16 hex digits (default: derived from the file's checksum and the voters, the same on every node)",
      valueHint: "HEX",
    },
    json: { type: "boolean", description: "Print JSON instead of text" },
  },
  async run({ args }) {
    const id = parseIntFlag("id", args.id, 1, 1_000_000);
    const peers = parseCluster(args.cluster);
    if (!peers.has(id)) throw new UsageError(`--cluster has no entry for node ${id}`);
    const dataDir = parseDataDir(args["data-dir"]);
    if (args["cluster-id"] !== undefined && !/^[0-9a-f]{16}$/.test(args["cluster-id"])) {
      throw new UsageError(`--cluster-id must be 16 lowercase hex digits, got '${args["cluster-id"]}'`);
    }
    let result;
    try {
      result = await restoreSnapshot({
        source: fileSource(args.file),
        dataDir,
        id,
        peers,
        ...(args["cluster-id"] === undefined ? {} : { clusterId: args["cluster-id"] }),
      });
    } catch (error) {
      if (error instanceof BackupFormatError) throw new ClientExit(1, `${args.file} is not a usable backup, nothing restored: ${error.message}`);
      if (error instanceof RestoreError) throw new ClientExit(1, `cannot restore: ${error.message}`);
      // Storage refuses an image it cannot take (a key twice, a row it finds invalid): nothing restored either.
      if (error instanceof Error && error.name === "StorageError") throw new ClientExit(1, `cannot restore, nothing restored: ${error.message}`);
      throw error;
    }
    printLine(
      args.json === true
        ? JSON.stringify({ ...result, id })
        : `restored ${args.file} into ${result.dataDir} as node ${id} of new cluster ${result.clusterId} (voters ${result.voters.join(",")}): index ${result.index}, term ${result.term}, ${result.rowCount} rows\n` +
            `start it with: kv serve --id ${id} --cluster ${args.cluster} --data-dir ${result.dataDir}${clientPortHint(id, peers.get(id) as string)}`,
    );
  },
});

/** `kv snapshot`: its subcommands. */
export const snapshotCommand = defineCommand({
  meta: { name: "snapshot", description: "Back up a cluster (save), check a backup (status), make a new cluster from one (restore)" },
  subCommands: { save: saveCommand, status: statusCommand, restore: restoreCommand },
});

/**
 * The `--listen-http` a restored node's start line needs when its peers reach it at another host
 * than this machine's loopback: the default client port listens on 127.0.0.1 only (found in a
 * review: a cluster restored on 10.0.0.x as printed served no client elsewhere).
 */
function clientPortHint(id: number, selfPeerUrl: string): string {
  if (isLoopbackHost(new URL(selfPeerUrl).hostname)) return "";
  const port = defaultListenHttp(id)?.split(":")[1] ?? "PORT";
  return ` --listen-http 0.0.0.0:${port}`;
}
