import { createPrivateKey, type KeyObject, X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { readFileSync, statSync } from "node:fs";
import { hostname } from "node:os";
import { defineCommand } from "citty";
import { KEY_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX_DEFAULT } from "../http/app.ts";
import { KEY_BYTES_MAX_LIMIT } from "../http/kv-key.ts";
import { isAddressOnly, isUnspecifiedHost } from "../lib/address-url.ts";
import { CLIENT_CONNECTIONS_MAX_DEFAULT, REQUEST_READ_TIMEOUT_MS_DEFAULT } from "../http/client-listener.ts";
import { createLogger, type LogFormat, type LogLevel } from "../lib/logger.ts";
import { defaultIdempotency, defaultNodeTimings, defaultQuotaBytes, defaultSnapshotPolicy } from "../node/kv-node.ts";
import { defaultWatch } from "../node/watch.ts";
import { createServer, ServerStartError, type KvServer } from "../server/create-server.ts";
import { defaultAdvertiseHttp, defaultListenHttp, defaultListenPeer, hostnameForId, idFromHostname, loopbackHttpWarning } from "./serve-addresses.ts";
import { localCluster, parseCluster, parseDurationFlag, parseHostPort, parseIntFlag, parseMsFlag, parseDataDir, readSecret, UsageError } from "./usage-error.ts";

/**
 * Upper bound of --value-bytes-max: one value is one Raft entry, which must fit, with its key and
 * framing, in one peer call (the peer server takes bodies up to 32 MiB).
 */
const VALUE_BYTES_MAX_LIMIT = 16 << 20;

/** The largest --watch-history-bytes: 16 GiB. */
const WATCH_HISTORY_BYTES_LIMIT = 16 * 1024 ** 3;
/** The smallest --quota-bytes other than 0 (no quota): an empty data dir already takes about 100 KB. */
const QUOTA_BYTES_MIN = 1 << 20;

/** Bounds of --request-read-timeout. */
const REQUEST_READ_TIMEOUT_MS_MIN = 100;
const REQUEST_READ_TIMEOUT_MS_MAX = 120_000;
/** Upper bound of --max-client-connections: well under the descriptors a process may open. */
const CLIENT_CONNECTIONS_MAX_LIMIT = 1_000_000;

/** Bounds of --idempotency-window: at least a second, at most a week. */
const IDEMPOTENCY_WINDOW_MS_MIN = 1_000;
const IDEMPOTENCY_WINDOW_MS_MAX = 7 * 24 * 3_600_000;
/** Upper bound of --idempotency-sessions-max (each session is a row of about 150 bytes plus its key). */
const IDEMPOTENCY_SESSIONS_MAX_LIMIT = 100_000_000;

/** Bounds of the watch flags. */
const WATCH_PROGRESS_MS_MAX = 3_600_000;
const WATCH_HISTORY_ENTRIES_LIMIT = 100_000_000;
const WATCH_HISTORY_MS_MAX = 7 * 24 * 3_600_000;

/** `kv serve`: runs one node until SIGTERM or SIGINT. */
export const serveCommand = defineCommand({
  meta: { name: "serve", description: "Run one node of a kv cluster (default: node N of the local 3-node cluster)" },
  args: {
    id: { type: "string", description: "This node's id (1, 2, 3, ...); required unless --id-from-hostname", valueHint: "N" },
    "id-from-hostname": {
      type: "boolean",
      description: "Take the id from the hostname's StatefulSet ordinal + 1 (kv-0 is node 1; $KV_HOSTNAME overrides the hostname)",
    },
    cluster: {
      type: "string",
      description: "Every voter's peer URL as this node reaches it (default: the local three on ports 5001-5003)",
      valueHint: "1=http://127.0.0.1:5001,2=...,3=...",
    },
    "listen-peer": {
      type: "string",
      description: "Peer (Raft) listen address (default: host:port of this node's --cluster entry; 0.0.0.0:port when that host is a DNS name)",
      valueHint: "host:port",
    },
    "listen-http": { type: "string", description: "Client HTTP listen address (default: 127.0.0.1:800N)", valueHint: "host:port" },
    "advertise-http": {
      type: "string",
      description: "Client URL peers learn for redirects (default: http:// + listen-http; with 0.0.0.0 or ::, this node's --cluster host)",
      valueHint: "URL",
    },
    "data-dir": { type: "string", description: "Where the log and state machine live (default: ./data/node-N)", valueHint: "DIR" },
    "tick-ms": { type: "string", description: `Length of one Raft tick in ms (default ${defaultNodeTimings.tickMs})`, valueHint: "MS" },
    "election-ticks": { type: "string", description: `Election timeout in ticks, randomized up to 2x (default ${defaultNodeTimings.electionTicks})`, valueHint: "N" },
    "heartbeat-ticks": { type: "string", description: `Heartbeat interval in ticks (default ${defaultNodeTimings.heartbeatTicks})`, valueHint: "N" },
    "request-timeout-ms": { type: "string", description: `How long a write or read may wait (default ${defaultNodeTimings.requestTimeoutMs})`, valueHint: "MS" },
    "log-level": { type: "string", description: "debug, info, warn or error (default info)", valueHint: "LEVEL" },
    "log-format": { type: "string", description: "json, text, or auto: text on a terminal, else JSON lines (default auto)", valueHint: "FORMAT" },
    "idempotency-window": {
      type: "string",
      description: `How long a write's Idempotency-Key is remembered, by the leaders' wall clocks; a retry after it applies again (default ${defaultIdempotency.windowMs / 60_000}m)`,
      valueHint: "DURATION",
    },
    "idempotency-sessions-max": {
      type: "string",
      description: `Idempotency-Key sessions kept at most; past it the oldest are forgotten first (default ${defaultIdempotency.sessionsMax})`,
      valueHint: "N",
    },
    "watch-progress-ms": {
      type: "string",
      description: `While a watch stream has nothing to send, a progress event at least this often: ms, or a duration such as 2s (default ${defaultWatch.progressMs})`,
      valueHint: "MS",
    },
    "watch-history-entries": {
      type: "string",
      description: `Changes kept for watches to start and resume from; older starts get 410 compacted (default ${defaultWatch.historyEntriesMax})`,
      valueHint: "N",
    },
    "watch-history-ms": {
      type: "string",
      description: `Changes older than this are dropped from the watch history: ms, or a duration such as 10m (default ${defaultWatch.historyMs}, 10 minutes)`,
      valueHint: "MS",
    },
    "watch-history-bytes": {
      type: "string",
      description: `Bytes of keys and values the watch history keeps at most, whatever the two above allow: a bound on its memory (default ${defaultWatch.historyBytesMax}, 8 MiB)`,
      valueHint: "BYTES",
    },
    "snapshot-entries": {
      type: "string",
      description: `Compact the log once this many entries are applied past the last snapshot (default ${defaultSnapshotPolicy.snapshotEntries})`,
      valueHint: "N",
    },
    "quota-bytes": {
      type: "string",
      description: `Space quota on the state machine this node keeps (the log's segments are not counted); past it puts get 507 quota_exceeded while reads and deletes go on. 0: none (default ${defaultQuotaBytes}, 2 GiB). Size the disk at the quota plus 64 MiB of WAL plus 11,000 times the average write plus 128 MiB (docs/operations.md)`,
      valueHint: "BYTES",
    },
    "snapshot-catchup-entries": {
      type: "string",
      description: `Entries kept behind the applied index when compacting, for followers slightly behind (default ${defaultSnapshotPolicy.snapshotCatchUpEntries})`,
      valueHint: "N",
    },
    "cluster-token": {
      type: "string",
      description: "Shared secret every peer call must carry (or env KV_CLUSTER_TOKEN, or --cluster-token-file: a flag's value shows in ps); at least 16 characters",
      valueHint: "SECRET",
    },
    "cluster-token-file": { type: "string", description: "Read the cluster token from this file (trailing newline ignored)", valueHint: "FILE" },
    "auth-token": {
      type: "string",
      description: "Bearer token the client API requires (or env KV_AUTH_TOKEN, or --auth-token-file: a flag's value shows in ps); at least 16 characters; /health stays open",
      valueHint: "SECRET",
    },
    "auth-token-file": { type: "string", description: "Read the client API's bearer token from this file", valueHint: "FILE" },
    "metrics-open": { type: "boolean", description: "Serve /status and /metrics without the bearer token" },
    "storage-thread": {
      type: "boolean",
      default: true,
      description: "Storage writes (log appends, applies, checkpoints) on a storage thread, off the node loop's",
      negativeDescription: "Storage writes on the node loop's thread (as --storage-thread=false): faster small writes, but large ones stall the loop (docs/operations.md)",
    },
    "key-bytes-max": {
      type: "string",
      description: `Largest key written, in UTF-8 bytes, 1..${KEY_BYTES_MAX_LIMIT} (default ${KEY_BYTES_MAX_DEFAULT}); longer: 413 (longer keys already stored stay readable and deletable)`,
      valueHint: "BYTES",
    },
    "value-bytes-max": {
      type: "string",
      description: `Largest value in bytes, 0..${VALUE_BYTES_MAX_LIMIT} (default ${VALUE_BYTES_MAX_DEFAULT}); larger: 413 before the rest of the body is read`,
      valueHint: "BYTES",
    },
    "request-read-timeout": {
      type: "string",
      description: `How long a client connection may take to send a request's headers (from its opening or its last answer; also how long it may sit idle) and, separately, its body; then the connection is closed, or a body gets 408 (default ${REQUEST_READ_TIMEOUT_MS_DEFAULT / 1000}s)`,
      valueHint: "DURATION",
    },
    "max-client-connections": {
      type: "string",
      description: `Client connections open at most; past it new ones are closed at once and counted in kv_http_connections_refused_total. 0: no cap, and connections are not tracked (default ${CLIENT_CONNECTIONS_MAX_DEFAULT})`,
      valueHint: "N",
    },
    "tls-cert": { type: "string", description: "PEM certificate (chain) for HTTPS on the client and peer ports; peer URLs are then https", valueHint: "FILE" },
    "tls-key": { type: "string", description: "PEM private key of --tls-cert", valueHint: "FILE" },
    join: {
      type: "string",
      description: "Join a running cluster: ask it (any member's client URL; redirects are followed) to add this node as a learner. Ignored once the data dir holds a configuration",
      valueHint: "URL,URL,...",
    },
    "advertise-peer": {
      type: "string",
      description: "Peer URL the cluster reaches this node at, sent with --join (default: http(s):// + --listen-peer)",
      valueHint: "URL",
    },
    "peer-ca": {
      type: "string",
      description: "PEM CA for mutual TLS between peers: callers need a certificate it signed, and peers' servers are verified against it",
      valueHint: "FILE",
    },
  },
  async run({ args }) {
    const idFromHost = args["id-from-hostname"] === true;
    if (idFromHost && args.id !== undefined) throw new UsageError("give --id or --id-from-hostname, not both");
    if (!idFromHost && args.id === undefined) throw new UsageError("Missing required argument: --id (or --id-from-hostname)");
    const id = idFromHost ? idFromHostname(hostnameForId(process.env, hostname)) : parseIntFlag("id", args.id, 1, 1_000_000);
    const joinEndpoints = args.join === undefined ? undefined : parseJoinEndpoints(args.join);
    // A joining node needs no --cluster: the cluster's answer says who is in it.
    const peers = args.cluster === undefined ? (joinEndpoints === undefined ? localCluster() : new Map<number, string>()) : parseCluster(args.cluster);
    if (!peers.has(id) && (joinEndpoints !== undefined || args["advertise-peer"] !== undefined)) {
      const listen = args["listen-peer"];
      if (args["advertise-peer"] === undefined && listen === undefined) throw new UsageError("--join needs --listen-peer (or --advertise-peer) when --cluster has no entry for this node");
      const scheme = args["tls-cert"] === undefined ? "http" : "https";
      // The host as parsed: a pattern over the text took [::1]:P for :: (found in review).
      if (args["advertise-peer"] === undefined && listen !== undefined && isUnspecifiedHost(parseHostPort("listen-peer", listen).hostname)) {
        throw new UsageError(`--listen-peer ${listen} is where this node listens, not an address the others reach it at: give --advertise-peer http(s)://HOST:PORT`);
      }
      peers.set(id, (args["advertise-peer"] ?? `${scheme}://${listen}`).replace(/\/+$/, ""));
    }
    const advertisePeer = (args["advertise-peer"] ?? peers.get(id))?.replace(/\/+$/, "");
    const selfPeerUrl = peers.get(id);
    if (selfPeerUrl === undefined) {
      // Say what to give (found in a black-box review: a node that had joined, started again without
      // its --join, heard only this, though its data dir's configuration would have served).
      const given = args.cluster === undefined ? "the default --cluster (nodes 1-3 on 127.0.0.1:5001-5003)" : "--cluster";
      throw new UsageError(`${given} has no entry for node ${id}: name its peer URL there, or start a node that joined a cluster as it was started (--join URL --listen-peer HOST:PORT; the configuration its data dir holds then wins)`);
    }
    const listenPeer = parseHostPort("listen-peer", args["listen-peer"] ?? defaultListenPeer(selfPeerUrl));
    const defaultHttp = defaultListenHttp(id);
    // 8000 + id is no port from id 57,536 on: said of the default, not of a flag never given (found in a review).
    if (args["listen-http"] === undefined && defaultHttp === undefined) throw new UsageError(`node ${id} has no default client port (8000 + id is past 65535): give --listen-http HOST:PORT`);
    const listenHttp = parseHostPort("listen-http", args["listen-http"] ?? (defaultHttp as string));
    // One port cannot serve both (found in a black-box review: "cannot listen for peers ... in use?").
    if (listenHttp.port !== 0 && listenHttp.port === listenPeer.port && (listenHttp.hostname === listenPeer.hostname || isUnspecifiedHost(listenHttp.hostname) || isUnspecifiedHost(listenPeer.hostname))) {
      throw new UsageError(`--listen-http ${listenHttp.hostname}:${listenHttp.port} and the peer port (--listen-peer, or this node's --cluster entry) ${listenPeer.hostname}:${listenPeer.port} are one port: give each its own`);
    }
    const tickMs = args["tick-ms"] === undefined ? defaultNodeTimings.tickMs : parseIntFlag("tick-ms", args["tick-ms"], 1, 10_000);
    const electionTicks =
      args["election-ticks"] === undefined ? defaultNodeTimings.electionTicks : parseIntFlag("election-ticks", args["election-ticks"], 2, 100_000);
    const heartbeatTicks =
      args["heartbeat-ticks"] === undefined
        ? Math.min(defaultNodeTimings.heartbeatTicks, electionTicks - 1)
        : parseIntFlag("heartbeat-ticks", args["heartbeat-ticks"], 1, electionTicks - 1);
    const requestTimeoutMs =
      args["request-timeout-ms"] === undefined
        ? defaultNodeTimings.requestTimeoutMs
        : parseIntFlag("request-timeout-ms", args["request-timeout-ms"], 1, 600_000);
    const snapshotEntries =
      args["snapshot-entries"] === undefined
        ? defaultSnapshotPolicy.snapshotEntries
        : parseIntFlag("snapshot-entries", args["snapshot-entries"], 2, 100_000_000);
    const snapshotCatchUpEntries =
      args["snapshot-catchup-entries"] === undefined
        ? Math.min(defaultSnapshotPolicy.snapshotCatchUpEntries, snapshotEntries - 1)
        : parseIntFlag("snapshot-catchup-entries", args["snapshot-catchup-entries"], 0, snapshotEntries - 1);
    const quotaBytesFlag =
      args["quota-bytes"] === undefined ? defaultQuotaBytes : parseIntFlag("quota-bytes", args["quota-bytes"], 0, Number.MAX_SAFE_INTEGER);
    if (quotaBytesFlag !== 0 && quotaBytesFlag < QUOTA_BYTES_MIN) throw new UsageError(`--quota-bytes must be 0 (no quota) or at least ${QUOTA_BYTES_MIN}, got '${args["quota-bytes"]}'`);
    const quotaBytes = quotaBytesFlag === 0 ? undefined : quotaBytesFlag;
    const idempotencyWindowMs =
      args["idempotency-window"] === undefined
        ? defaultIdempotency.windowMs
        : parseDurationFlag("idempotency-window", args["idempotency-window"], IDEMPOTENCY_WINDOW_MS_MIN, IDEMPOTENCY_WINDOW_MS_MAX);
    const idempotencySessionsMax =
      args["idempotency-sessions-max"] === undefined
        ? defaultIdempotency.sessionsMax
        : parseIntFlag("idempotency-sessions-max", args["idempotency-sessions-max"], 1, IDEMPOTENCY_SESSIONS_MAX_LIMIT);
    const watch = {
      progressMs:
        args["watch-progress-ms"] === undefined ? defaultWatch.progressMs : parseMsFlag("watch-progress-ms", args["watch-progress-ms"], 1, WATCH_PROGRESS_MS_MAX),
      historyEntriesMax:
        args["watch-history-entries"] === undefined
          ? defaultWatch.historyEntriesMax
          : parseIntFlag("watch-history-entries", args["watch-history-entries"], 1, WATCH_HISTORY_ENTRIES_LIMIT),
      historyMs: args["watch-history-ms"] === undefined ? defaultWatch.historyMs : parseMsFlag("watch-history-ms", args["watch-history-ms"], 0, WATCH_HISTORY_MS_MAX),
      historyBytesMax:
        args["watch-history-bytes"] === undefined
          ? defaultWatch.historyBytesMax
          : parseIntFlag("watch-history-bytes", args["watch-history-bytes"], 1024 * 1024, WATCH_HISTORY_BYTES_LIMIT),
    };
    const logLevel = (args["log-level"] ?? "info") as LogLevel;
    if (!["debug", "info", "warn", "error"].includes(logLevel)) throw new UsageError(`--log-level must be debug, info, warn or error`);
    const dataDir = args["data-dir"] === undefined ? `./data/node-${id}` : parseDataDir(args["data-dir"]);
    const clusterToken = readSecret("cluster-token", args["cluster-token"], args["cluster-token-file"], "KV_CLUSTER_TOKEN");
    const authToken = readSecret("auth-token", args["auth-token"], args["auth-token-file"], "KV_AUTH_TOKEN");
    const metricsOpen = args["metrics-open"] === true;
    const storageThread = args["storage-thread"] !== false;
    const tls = readTls(args["tls-cert"], args["tls-key"], args["peer-ca"]);
    const keyBytesMax =
      args["key-bytes-max"] === undefined ? KEY_BYTES_MAX_DEFAULT : parseIntFlag("key-bytes-max", args["key-bytes-max"], 1, KEY_BYTES_MAX_LIMIT);
    const valueBytesMax =
      args["value-bytes-max"] === undefined
        ? VALUE_BYTES_MAX_DEFAULT
        : parseIntFlag("value-bytes-max", args["value-bytes-max"], 0, VALUE_BYTES_MAX_LIMIT);
    const requestReadTimeoutMs =
      args["request-read-timeout"] === undefined
        ? REQUEST_READ_TIMEOUT_MS_DEFAULT
        : parseDurationFlag("request-read-timeout", args["request-read-timeout"], REQUEST_READ_TIMEOUT_MS_MIN, REQUEST_READ_TIMEOUT_MS_MAX);
    const clientConnectionsMax =
      args["max-client-connections"] === undefined
        ? CLIENT_CONNECTIONS_MAX_DEFAULT
        : parseIntFlag("max-client-connections", args["max-client-connections"], 0, CLIENT_CONNECTIONS_MAX_LIMIT);
    const peerScheme = tls === undefined ? "http:" : "https:";
    for (const [peerId, url] of peers) {
      if (new URL(url).protocol !== peerScheme) {
        throw new UsageError(
          tls === undefined
            ? `--cluster: node ${peerId}'s URL ${url} is https, which needs --tls-cert and --tls-key`
            : `--cluster: node ${peerId}'s URL ${url} must be https when --tls-cert is given`,
        );
      }
    }

    const given = args["advertise-http"];
    // Peers redirect clients there: it must be a URL (found in a black-box review: `notaurl` was taken),
    // and only where the node is: a redirect to a path it does not serve reads as an absent key.
    if (given !== undefined && (!URL.canParse(given) || !/^https?:$/.test(new URL(given).protocol))) {
      throw new UsageError(`--advertise-http must be an http(s) URL such as http://10.0.0.1:8001, got '${given}'`);
    }
    // Followers send clients there with their token: to plain http from a node serving HTTPS, the
    // token went out in clear before the TLS port reset the connection (found in a security review).
    // (The other way, https in front of a plain node, is a TLS proxy's, and fine.)
    if (given !== undefined && tls !== undefined && new URL(given).protocol === "http:") {
      throw new UsageError(`--advertise-http '${given}' is plain http, but this node serves HTTPS (--tls-cert): clients sent there would send their token in clear; give its https:// URL`);
    }
    const advertiseHttp = given === undefined ? defaultAdvertiseHttp(listenHttp, selfPeerUrl, tls === undefined ? "http" : "https") : clientOrigin("--advertise-http", given);

    const logFormat = (args["log-format"] ?? "auto") as LogFormat;
    if (!["json", "text", "auto"].includes(logFormat)) throw new UsageError("--log-format must be json, text or auto");
    // Every line carries the node's term once the node exists.
    let termNow: (() => number) | undefined;
    const logger = createLogger(id, logLevel, { format: logFormat, term: () => termNow?.() });
    // A secret in a file others may read is said at start, as ssh says of a private key (found in a
    // black-box review); the TLS key's too (a security review: it was not).
    for (const flag of ["cluster-token-file", "auth-token-file", "tls-key"] as const) {
      const warning = secretFileWarning(flag, args[flag]);
      if (warning !== undefined) logger.log("warn", "secret file", { detail: warning });
    }
    // An empty variable reads as unset (a script's `export KV_AUTH_TOKEN=$(cat missing)`): said,
    // or the node would serve without the token its operator meant it to require.
    for (const [flag, envName] of [["cluster-token", "KV_CLUSTER_TOKEN"], ["auth-token", "KV_AUTH_TOKEN"]] as const) {
      if (process.env[envName] === "" && args[flag] === undefined && args[`${flag}-file`] === undefined) {
        logger.log("warn", "secret", { detail: `$${envName} is set but empty: read as unset, so this node requires no ${flag === "auth-token" ? "client" : "cluster"} token` });
      }
    }
    // A certificate peers or clients will refuse is said at start, not found later as a network
    // fault (found in a black-box review: an expired one showed only as ECONNRESET on the peers).
    if (tls !== undefined) {
      for (const problem of certificateProblems(new X509Certificate(tls.cert), [advertisePeer, advertiseHttp], new Date())) {
        logger.log("warn", "tls certificate", { detail: `--tls-cert ${problem}` });
      }
      const unsigned = tls.ca === undefined ? undefined : unsignedByCa(tls.cert, tls.ca);
      if (unsigned !== undefined) logger.log("warn", "tls certificate", { detail: `--tls-cert ${unsigned}` });
    }

    // Not with --advertise-http: clients are sent where the operator said (a proxy in front, say).
    const loopbackOnly = args["listen-http"] === undefined && args["advertise-http"] === undefined ? loopbackHttpWarning(selfPeerUrl, listenHttp) : undefined;
    if (loopbackOnly !== undefined) logger.log("warn", "client port on loopback", { detail: loopbackOnly });

    let server: KvServer;
    try {
      server = await createServer({
        id,
        peers,
        ...(args.cluster === undefined && joinEndpoints === undefined ? { peersByDefault: true } : {}),
        listenPeer,
        listenHttp,
        ...(advertiseHttp === undefined ? {} : { advertiseHttp }),
        ...(joinEndpoints === undefined ? {} : { join: { endpoints: joinEndpoints, advertisePeer: advertisePeer as string } }),
        dataDir,
        storageThread,
        tickMs,
        electionTicks,
        heartbeatTicks,
        requestTimeoutMs,
        snapshotEntries,
        snapshotCatchUpEntries,
        ...(quotaBytes === undefined ? {} : { quotaBytes }),
        idempotencyWindowMs,
        idempotencySessionsMax,
        ...(clusterToken === undefined ? {} : { clusterToken }),
        ...(authToken === undefined ? {} : { authToken }),
        metricsOpen,
        ...(tls === undefined ? {} : { tls }),
        keyBytesMax,
        valueBytesMax,
        requestReadTimeoutMs,
        clientConnectionsMax,
        watch,
        logger,
        onFatal: (error) => void shutdown(1, error.message),
      });
    } catch (error) {
      if (!(error instanceof ServerStartError)) throw error;
      logger.log("error", "stopping", { reason: error.message });
      process.exit(error.exitCode);
    }
    const node = server.node;
    // From the core alone: a log line written while stopping (a second signal's) must not read the
    // storage, which stop() closes (status() threw there, and the node exited 0 instead of 1).
    termNow = () => node.currentTerm();

    let stopping = false;
    /** Stops the node (handing leadership over when it stops cleanly) and exits with `code`, or 1 if stopping failed. */
    async function shutdown(code: number, reason: string): Promise<void> {
      if (stopping) return;
      stopping = true;
      let exitCode = code;
      try {
        await server.stop({ handOver: code === 0, reason });
      } catch (error) {
        exitCode = 1;
        logger.log("error", "stopping failed", { error: errorText(error), stack: error instanceof Error ? error.stack : undefined });
      }
      logger.log(exitCode === 0 ? "info" : "error", "stopped", { code: exitCode });
      process.exit(exitCode);
    }
    let signals = 0;
    const onSignal = (signal: string) => {
      signals++;
      if (signals === 1) return void shutdown(0, signal);
      // A second signal while stopping: the operator wants out now. SQLite recovers its WAL on restart.
      logger.log("warn", "stopping now", { reason: `second ${signal} while stopping`, code: 1 });
      process.exit(1);
    };
    process.on("SIGTERM", () => onSignal("SIGTERM"));
    process.on("SIGINT", () => onSignal("SIGINT"));
    await new Promise<never>(() => {});
  },
});

/** What to say of `--flag FILE` when others than its owner may read the secret in it. */
export function secretFileWarning(flag: string, file: string | undefined): string | undefined {
  if (file === undefined) return undefined;
  let mode: number;
  try {
    mode = statSync(file).mode & 0o777;
  } catch {
    return undefined; // read already, at the flag's check: gone since, nothing to say of it
  }
  if ((mode & 0o077) === 0) return undefined;
  return `--${flag} '${file}' may be read by ${(mode & 0o007) !== 0 ? "every user" : "its group"} (mode ${mode.toString(8).padStart(4, "0")}): chmod 600 it`;
}

/** PEM contents of the TLS flags, checked: a certificate with its matching key, and a CA that parses. */
function readTls(certFile: string | undefined, keyFile: string | undefined, caFile: string | undefined) {
  if ((certFile === undefined) !== (keyFile === undefined)) throw new UsageError("--tls-cert and --tls-key go together");
  if (certFile === undefined || keyFile === undefined) {
    if (caFile !== undefined) throw new UsageError("--peer-ca needs --tls-cert and --tls-key: peers present this node's certificate");
    return undefined;
  }
  const cert = readPem("tls-cert", certFile);
  const key = readPem("tls-key", keyFile);
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    throw new UsageError(`--tls-cert: '${certFile}' is not a PEM certificate (${errorText(error)})`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    throw new UsageError(`--tls-key: '${keyFile}' is not a PEM private key (${errorText(error)})`);
  }
  if (!certificate.checkPrivateKey(privateKey)) throw new UsageError(`--tls-key: '${keyFile}' is not the key of the certificate in '${certFile}'`);
  if (caFile === undefined) return { cert, key };
  const ca = readPem("peer-ca", caFile);
  try {
    new X509Certificate(ca);
  } catch (error) {
    throw new UsageError(`--peer-ca: '${caFile}' is not a PEM certificate (${errorText(error)})`);
  }
  return { cert, key, ca };
}

/**
 * What makes `certificate` one a peer or client would refuse: outside its validity at `now`, or
 * not naming the host of each of `urls` (the node's peer and client URLs) among its names.
 */
export function certificateProblems(certificate: X509Certificate, urls: readonly (string | undefined)[], now: Date): string[] {
  const problems: string[] = [];
  const from = new Date(certificate.validFrom);
  const to = new Date(certificate.validTo);
  if (now > to) problems.push(`expired on ${to.toISOString()}: peers and clients refuse it`);
  else if (now < from) problems.push(`is not valid before ${from.toISOString()}: peers and clients refuse it until then`);
  const hosts = new Set<string>();
  for (const url of urls) {
    if (url === undefined) continue;
    try {
      hosts.add(new URL(url).hostname.replace(/^\[|\]$/g, ""));
    } catch {
      // Not a URL: nothing to check it against.
    }
  }
  for (const host of hosts) {
    if (host === "0.0.0.0" || host === "::") continue;
    const covered = isIP(host) !== 0 ? certificate.checkIP(host) !== undefined : certificate.checkHost(host) !== undefined;
    if (!covered) problems.push(`does not name ${host} (subjectAltName: ${certificate.subjectAltName ?? "none"}): peers and clients that reach this node as ${host} refuse it`);
  }
  return problems;
}

/**
 * What to say when no certificate of `certPem` (the node's, then any intermediates) is signed by a
 * certificate of `caPem` (--peer-ca, one or a bundle): peers that verify against --peer-ca refuse
 * this node's calls and its peer port, and it refuses theirs if they share its certificate's
 * issuer. Undefined when one is. Said at start, not found later as refused handshakes.
 */
export function unsignedByCa(certPem: string, caPem: string): string | undefined {
  const chain = pemCertificates(certPem);
  const cas = pemCertificates(caPem);
  if (chain.some((certificate) => cas.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey)))) return undefined;
  const issuer = chain[0]?.issuer.replaceAll("\n", ", ") ?? "unknown";
  const subjects = cas.map((ca) => ca.subject.replaceAll("\n", ", ")).join("; ");
  return `is not signed by --peer-ca (its issuer: ${issuer}; --peer-ca: ${subjects}): peers that verify against --peer-ca refuse this node`;
}

/** Every certificate in a PEM text, in order (blocks that do not parse are left out). */
function pemCertificates(pem: string): X509Certificate[] {
  const certificates: X509Certificate[] = [];
  for (const block of pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []) {
    try {
      certificates.push(new X509Certificate(block));
    } catch {
      // Checked as a whole by readTls; a block of a bundle that does not parse signs nothing.
    }
  }
  return certificates;
}

function readPem(flag: string, file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    throw new UsageError(`--${flag}: cannot read '${file}': ${errorText(error)}`);
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** `--join` endpoints: comma-separated client URLs of running members. */
function parseJoinEndpoints(value: string): string[] {
  const endpoints = value.split(",").map((part) => part.trim()).filter((part) => part !== "");
  if (endpoints.length === 0) throw new UsageError("--join needs at least one member's client URL");
  return endpoints.map((endpoint) => {
    if (!URL.canParse(endpoint) || !/^https?:$/.test(new URL(endpoint).protocol)) throw new UsageError(`--join: '${endpoint}' is not an http(s) URL`);
    // Refused here, before anything is written, rather than by the join's client after the data dir was made.
    return clientOrigin("--join", endpoint);
  });
}

/**
 * A node's client URL (an http(s) URL already): its origin, or a usage error when it has a user, a
 * path, a query or a fragment, which no node serves (found in review: `--advertise-http .../v1` sent
 * clients' redirects to a route that does not exist).
 */
function clientOrigin(flag: string, text: string): string {
  const url = new URL(text);
  if (!isAddressOnly(url, text)) {
    throw new UsageError(`${flag} '${text}' must be only a scheme, host and port (http(s)://host:port), without a user, path, query or fragment`);
  }
  return url.origin;
}
