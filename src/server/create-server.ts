import { randomBytes } from "node:crypto";
import { accessSync, constants, existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { rootCertificates } from "node:tls";
import { mkdirDurably } from "../lib/fsync-path.ts";
import packageJson from "../../package.json" with { type: "json" };
import { LARGE_BODIES_BYTES_MAX_DEFAULT, LARGE_BODY_BYTES_MIN } from "../http/app.ts";
import { BodyAdmission } from "../http/body-admission.ts";
import { type ClientListener, createClientListener } from "../http/client-listener.ts";
import { createHttpHandler } from "../http/http-handler.ts";
import { instrumentNode, type NodeMetrics } from "../http/node-metrics.ts";
import { createSystemClock } from "../lib/clock.ts";
import { CLUSTER_ID_FILE, ClusterIdFileError, deriveClusterId, loadOrCreateClusterId, writeLineDurably } from "../lib/cluster-id.ts";
import { checkNodeId, NodeIdFileError, recordNodeId } from "../lib/node-id-file.ts";
import { recordVoteHold, voteHoldRecorded } from "../lib/vote-hold-file.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { refuseUnfinishedRestore, RestoreError } from "./restore-snapshot.ts";
import type { Logger } from "../lib/logger.ts";
import { createMetricsRegistry, LATENCY_BUCKETS_S } from "../lib/metrics.ts";
import { observeMethod } from "../lib/observe-method.ts";
import { createPrng } from "../lib/prng.ts";
import { COMMAND_LEVEL } from "../kv/command.ts";
import { defaultNodeTimings, KvNode } from "../node/kv-node.ts";
import { defaultWatch, type WatchConfig } from "../node/watch.ts";
import { peerIdentityOf, sameUrl } from "../node/membership.ts";
import type { NodeId } from "../raft/types.ts";
import { type KvStorage, StorageError } from "../storage/kv-storage.ts";
import type { TornCut } from "../storage/segment-log.ts";
import { DATABASE_FILE, openSqliteStorage } from "../storage/sqlite-storage.ts";
import { openThreadedStorage } from "../storage/threaded-storage.ts";
import { createConnectTransport, peerRpcTimeoutMs } from "../transport/connect-transport.ts";
import { registerTransportMetrics } from "../transport/transport-metrics.ts";
import { joinCluster } from "./join.ts";
import type { CheckpointReport } from "../storage/checkpointer.ts";
import { diskUsage } from "./disk-usage.ts";

/** A host and port to listen on (port 0: the OS picks). */
export interface ListenAddress {
  readonly hostname: string;
  readonly port: number;
}

/** Everything a node needs, already checked (`kv serve` turns flags into this). Units are in the names. */
export interface ServerConfig {
  readonly id: NodeId;
  /** Peer URLs as this node reaches them, its own included (see `KvNodeConfig.peers`). */
  readonly peers: ReadonlyMap<NodeId, string>;
  /** `peers` is the local cluster's default (no --cluster and no --join given), not the operator's word. */
  readonly peersByDefault?: boolean;
  readonly listenPeer: ListenAddress;
  readonly listenHttp: ListenAddress;
  /** The client URL peers learn for redirects (default: http(s):// + the bound HTTP address). */
  readonly advertiseHttp?: string;
  /** `--join`: members' client URLs to ask for this node's addition, with the peer URL to give them. */
  readonly join?: { readonly endpoints: readonly string[]; readonly advertisePeer: string };
  readonly dataDir: string;
  /**
   * storage writes (log appends, applies, compactions, checkpoints, fsyncs) on a worker thread, off the
   * node loop's thread (src/storage/threaded-storage.ts). Default true; false keeps them on the
   * loop's thread (`kv serve --storage-thread=false`), to compare.
   */
  readonly storageThread?: boolean;
  /**
   * The level of log commands this node tells its peers it applies (default: this release's,
   * `COMMAND_LEVEL`). Only for tests that stand in for a member of an older release.
   */
  readonly commandLevel?: number;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  readonly requestTimeoutMs: number;
  readonly snapshotEntries: number;
  readonly snapshotCatchUpEntries: number;
  /** Undefined: no quota. */
  readonly quotaBytes?: number;
  readonly idempotencyWindowMs: number;
  readonly idempotencySessionsMax: number;
  readonly clusterToken?: string;
  readonly authToken?: string;
  /** Serve /status and /metrics without the bearer token. */
  readonly metricsOpen: boolean;
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca?: string };
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly requestReadTimeoutMs: number;
  /** 0: no cap, and no connection layer. */
  readonly clientConnectionsMax: number;
  /** Watch streams and their history; each field defaults to `defaultWatch`'s. */
  readonly watch?: Partial<WatchConfig>;
  readonly logger: Logger;
  /** Called once if the node stops on its own (a storage failure or a bug): the process should exit. */
  readonly onFatal?: (error: Error) => void;
}

/** A started node: its ports, and `stop()`. */
export interface KvServer {
  readonly node: KvNode;
  readonly httpPort: number;
  readonly httpUrl: string;
  readonly peerPort: number;
  readonly clusterId: string;
  /**
   * Stops serving: with `handOver`, a leader first hands leadership to another voter (a rolling
   * restart then costs no election timeout); then new requests get 503, requests waiting on the
   * node fail with `unavailable`, answers in flight drain (at most 3 s), and the storage is closed.
   * Idempotent: a second call waits for the first.
   */
  stop(options?: { readonly handOver?: boolean; readonly reason?: string }): Promise<void>;
}

/** Starting failed in a way the operator must act on; `exitCode` is what `kv serve` exits with. */
export class ServerStartError extends Error {
  override name = "ServerStartError";
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** How often a node that cannot start on a full disk tries again. */
const DISK_RETRY_MS = 1_000;
/** The level of a transport's line: a peer that answers again is news, not a warning (a review counted 31 at warn). */
export function peerLineLevel(line: string): "warn" | "info" {
  return line.endsWith(": reachable again") ? "info" : "warn";
}

/**
 * The level a node's event is logged at: what stops the node, or freezes it until an operator
 * acts, is an error; what failed and is retried, a warning; the rest is info. (A full disk found
 * at run time was info, where the same found at start is an error: an alert on warnings missed a
 * frozen node, found in a black-box review.)
 */
export function nodeEventLevel(event: string): "error" | "warn" | "info" {
  switch (event) {
    case "fatal":
    case "disk full":
      return "error";
    case "snapshot send failed":
    case "learner promotion failed":
    case "peer address from --cluster":
    // Puts are refused until data is deleted or the quota raised: a write outage an alert on
    // warnings must see (found in a black-box review: it was info).
    case "quota exceeded":
    case "quorum lost":
      return "warn";
    default:
      return "info";
  }
}

/** The period of the timer whose lateness `kv_event_loop_lag_seconds` records. */
const LOOP_LAG_PROBE_MS = 10;
/** The longest idle timeout Bun.serve takes, in seconds. */
const idleTimeoutSMax = 255;
/** How long shutdown waits for requests in flight to be answered before it closes their connections. */
const SHUTDOWN_DRAIN_MS_MAX = 3_000;

/**
 * The composition root: opens the data dir (waiting out a full disk), joins a running cluster when
 * asked, assembles storage, node, transport, HTTP API and metrics, and returns the node started and
 * serving. A test runs a node in-process with it; `kv serve` only turns flags into `config`.
 */
export async function createServer(config: ServerConfig): Promise<KvServer> {
  const { id, logger, dataDir, tls } = config;
  // A full disk at start is waited out (one log line), as the running node waits it out.
  const waitForSpace = <T>(what: string, attempt: () => T) => retryWhileDiskFull(what, dataDir, logger, attempt);
  // Owner only, as etcd makes its data dir: the log and the database hold every value, readable
  // past --auth-token by any local user through a 0755 directory (found in a security review). An
  // existing directory is left as it is.
  await waitForSpace("create the data dir", () => mkdirDurably(dataDir, undefined, DATA_DIR_MODE));
  const metrics = createMetricsRegistry();
  const storageThread = config.storageThread ?? true;
  // With the storage thread, durations are the writer thread's own (the loop only posts the work).
  const where = storageThread ? "on the storage thread" : "on the loop's thread";
  const saveDuration = metrics.histogram(
    "kv_storage_save_duration_seconds",
    `One save of the Raft log and hard state (one append to the log's segment, ${where}); with sync=true it includes the fsync.`,
    LATENCY_BUCKETS_S,
    ["sync"],
  );
  const fsyncDuration = metrics.histogram(
    "kv_storage_fsync_duration_seconds",
    storageThread
      ? "One fsync of what the loop wrote since the last, timed on the storage thread (it runs off the loop's thread; the replies it covers wait for it)."
      : "One background fsync of what the loop wrote since the last (it runs off the loop's thread; the replies it covers wait for it).",
    LATENCY_BUCKETS_S,
  );
  const applyDuration = metrics.histogram(
    "kv_storage_apply_duration_seconds",
    `One apply of committed entries to the state machine (one sqlite transaction, ${where}).`,
    LATENCY_BUCKETS_S,
  );
  const compactDuration = metrics.histogram(
    "kv_storage_compact_duration_seconds",
    `One log compaction (one sqlite transaction, ${where}).`,
    LATENCY_BUCKETS_S,
  );
  const checkpointDuration = metrics.histogram(
    "kv_storage_checkpoint_duration_seconds",
    storageThread
      ? "One round of WAL checkpoints: on a worker thread with its own connection (thread=worker), or the short one on the storage thread, the writer's, that lets the WAL start over (thread=loop: the writer's thread, which is no longer the loop's)."
      : "One round of WAL checkpoints: on a worker thread with its own connection (thread=worker), or the short one on the loop's thread that lets the WAL start over (thread=loop).",
    LATENCY_BUCKETS_S,
    ["thread"],
  );
  const walFrames = metrics.gauge("kv_storage_wal_frames", "Frames in the WAL after the last round of checkpoints.");
  const onCheckpoint = (report: CheckpointReport) => {
    if (report.error !== undefined) {
      logger.log("warn", "checkpoint failed", { error: report.error, detail: "retried with the next writes" });
      return;
    }
    checkpointDuration.observe({ thread: report.thread === "worker" ? "worker" : "loop" }, report.durationMs / 1000);
    walFrames.set({}, report.walFrames);
  };
  // Nor into part of one: a restore into this directory that did not finish.
  try {
    refuseUnfinishedRestore(dataDir);
  } catch (error) {
    if (error instanceof RestoreError) throw new ServerStartError(error.message, 1);
    throw error;
  }
  // Before the storage opens, which would write into a data dir that is not this node's.
  try {
    checkNodeId(dataDir, config.id);
  } catch (error) {
    if (error instanceof NodeIdFileError) throw new ServerStartError(error.message, 1);
    throw error;
  }
  const sqliteStorage: KvStorage & { released(): Promise<void>; tornCut(): TornCut | undefined } = await waitForSpace("open the database", () =>
    storageThread
      ? openThreadedStorage(dataDir, {
          nodeId: config.id,
          onCheckpoint,
          onRequestDone: (report) => {
            const durationS = report.durationMs / 1000;
            if (report.op === "save") saveDuration.observe({ sync: String(report.sync) }, durationS);
            else if (report.op === "apply") applyDuration.observe({}, durationS);
            else if (report.op === "compact") compactDuration.observe({}, durationS);
            else if (report.op === "sync") fsyncDuration.observe({}, durationS);
          },
        })
      : openSqliteStorage(dataDir, { nodeId: config.id, onCheckpoint }),
  );
  // A data dir that holds a log or a configuration wrote its cluster id before either (and a
  // restore or a join writes it first): without the file, it was lost. Derived again, the id is
  // another cluster's whenever the cluster's is not the one its voters derive (restored from a
  // backup, grown by --join, or given --cluster-id), and the node was refused by its peers for
  // good, having written the wrong id over the lost one (found in a black-box review). A member
  // that joined (added at an index past 0) never derives its cluster's id: refused. A founding
  // member derives it as before (its cluster's, unless restored or given --cluster-id), said in
  // the log with what to do if it is not.
  const lostClusterId = !existsSync(join(dataDir, CLUSTER_ID_FILE)) && (sqliteStorage.lastIndex() > 0 || sqliteStorage.membership().voters.length > 0);
  const ownAddedIndex = sqliteStorage.membership().addresses.find((address) => address.id === id)?.addedIndex ?? 0;
  if (lostClusterId && ownAddedIndex > 0) {
    sqliteStorage.close();
    throw new ServerStartError(
      `${join(dataDir, CLUSTER_ID_FILE)} is missing, but the data dir holds this node's log and configuration, and it joined its cluster (added at index ${ownAddedIndex}), whose id its flags do not derive: the file was deleted or lost. ` +
        `Copy ${CLUSTER_ID_FILE} from another member's data dir (every member of a cluster holds the same one), then start this node again; nothing was changed`,
      1,
    );
  }
  const tornCut = sqliteStorage.tornCut();
  if (tornCut !== undefined) {
    logger.log("warn", "log cut", {
      ...tornCut,
      detail:
        "the log's last record was torn (being written when the process or the machine stopped, so never durable and never acknowledged) and was cut off; if neither stopped abruptly, check the disk",
    });
  }
  // A node that joined elsewhere, started again with neither --join nor --cluster, took the local
  // cluster's defaults for its own and its peers' addresses over the ones its data dir records, and
  // listened where no member reaches it (found in a review; an id past 3 was refused for want of an
  // entry, ids 1-3 went on): refused, saying how it was started.
  const recordedSelf = sqliteStorage.membership().addresses.find((address) => address.id === id)?.peerUrl;
  if (config.peersByDefault === true && recordedSelf !== undefined && !sameUrl(recordedSelf, config.peers.get(id) ?? "")) {
    sqliteStorage.close();
    throw new ServerStartError(
      `this data dir records node ${id} at ${recordedSelf}, not at the default local cluster's ${config.peers.get(id)}: start it as it was started (--join URL with --listen-peer, or --cluster), whose configuration its data dir then holds; nothing was changed`,
      1,
    );
  }
  let joinedClusterId: string | undefined;
  if (config.join !== undefined) {
    const fresh = sqliteStorage.membership().voters.length === 0 && sqliteStorage.lastIndex() === 0;
    if (!fresh) {
      logger.log("info", "join", {
        detail:
          "the data dir already holds a configuration: not joining again, the node takes part as it says (if this node was removed from the cluster since, or its join never completed, empty its data dir and start it with --join)",
      });
    } else {
      const { listenHttp } = config;
      // The join is recorded by the cluster before this node listens: a port taken now would leave
      // a member at an address nobody answers, for good (found in a black-box review).
      for (const [what, address] of [["peers", config.listenPeer], ["clients", listenHttp]] as const) {
        const taken = portTaken(address.hostname, address.port);
        if (taken !== undefined) {
          sqliteStorage.close();
          throw new ServerStartError(`cannot listen for ${what} on ${address.hostname}:${address.port}: ${taken}; nothing was asked of the cluster`, 1);
        }
      }
      // An IPv6 address in brackets, as the client URL after the listener (found in a code review: `http://::1:PORT`).
      const joinHost = listenHttp.hostname.includes(":") ? `[${listenHttp.hostname}]` : listenHttp.hostname;
      const httpUrl = listenHttp.port === 0 ? config.advertiseHttp : (config.advertiseHttp ?? `${tls === undefined ? "http" : "https"}://${joinHost}:${listenHttp.port}`);
      try {
        const answer = await joinCluster({
          endpoints: config.join.endpoints,
          id,
          peerUrl: config.join.advertisePeer,
          httpUrl: httpUrl?.replace(/\/+$/, ""),
          authToken: config.authToken,
          clusterToken: config.clusterToken,
          // The CA that signed the peers' certificates signed their client ports' too, as a rule; the
          // system's stay trusted (a CA given to fetch replaces them: found in review).
          ...(tls?.ca === undefined ? {} : { ca: [...rootCertificates, tls.ca] }),
          timeoutMs: 60_000,
          logger,
        });
        // The cluster's id first: with the configuration durable and not the id, a crash between the
        // two left a node that derived another id and was refused for good (found in a black-box
        // review). The other way round, the restart finds no configuration and joins again.
        if (answer.clusterId !== undefined) writeLineDurably(dataDir, CLUSTER_ID_FILE, answer.clusterId);
        sqliteStorage.bootstrapJoined(answer, answer.configIndex);
        joinedClusterId = answer.clusterId;
        logger.log("info", "joined", { voters: answer.voters, learners: answer.learners, configIndex: answer.configIndex });
      } catch (error) {
        sqliteStorage.close();
        throw new ServerStartError(`join failed: ${errorText(error)}`, 1);
      }
    }
  }
  let storage: KvStorage = sqliteStorage;
  if (!storageThread) {
    storage = observeMethod(storage, "save", (durationS, [, , sync]) => saveDuration.observe({ sync: String(sync) }, durationS));
    storage = observeMethod(storage, "sync", (durationS) => fsyncDuration.observe({}, durationS));
    storage = observeMethod(storage, "applyEntries", (durationS) => applyDuration.observe({}, durationS));
    storage = observeMethod(storage, "compact", (durationS) => compactDuration.observe({}, durationS));
  }
  // After the storage: its exclusive lock keeps a second process off this data dir.
  await waitForSpace("record the node id", () => recordNodeId(dataDir, config.id));
  const clusterIdChoice = await waitForSpace("record the cluster id", () => {
    try {
      // A node that just joined adopts the cluster's id (the voters it was derived from are the cluster's first ones).
      return loadOrCreateClusterId(dataDir, joinedClusterId ?? deriveClusterId([...config.peers.keys()], config.clusterToken));
    } catch (error) {
      if (!(error instanceof ClusterIdFileError)) throw error;
      storage.close();
      throw new ServerStartError(`${error.message}: restore it, or remove it to derive the id again`, 1);
    }
  });
  if (lostClusterId) {
    logger.log("warn", "cluster id", {
      detail:
        `${join(dataDir, CLUSTER_ID_FILE)} was missing, though the data dir holds this node's log: the id was derived again from --cluster and the cluster token, ${clusterIdChoice.clusterId}. ` +
        `If the cluster was restored from a backup or given --cluster-id, that is not its id, and its peers will refuse this node: stop it, copy ${CLUSTER_ID_FILE} from another member's data dir, and start it again`,
      clusterId: clusterIdChoice.clusterId,
    });
  }
  // After a membership change --cluster no longer names the voters the id was derived from.
  if (clusterIdChoice.clusterId !== clusterIdChoice.derivedId && sqliteStorage.membership().changedIndex === 0) {
    logger.log("warn", "cluster id", {
      detail: `the data dir belongs to cluster ${clusterIdChoice.clusterId}, but this configuration (voters and cluster token) derives ${clusterIdChoice.derivedId}: peers of another cluster will refuse this node`,
      clusterId: clusterIdChoice.clusterId,
      derivedClusterId: clusterIdChoice.derivedId,
    });
  }
  let nodeMetrics: NodeMetrics | undefined;
  let server: KvServer | undefined;
  // The transport's peer map: the node keeps it filled with every member's peer URL as membership changes.
  const peerDirectory = new Map([...config.peers].filter(([peerId]) => peerId !== id));
  const node = await waitForSpace("record the configuration", () =>
    new KvNode({
      id,
      peers: config.peers,
      peerDirectory,
      httpUrl: "", // set below once the HTTP port is bound
      storage,
      clock: createSystemClock(),
      prng: createPrng((Date.now() ^ (id * 2654435761)) >>> 0),
      // From the system's random source: clusters started in the same millisecond get different nonces.
      drawClusterNonce: () => randomBytes(8).toString("hex"),
      tickMs: config.tickMs,
      electionTicks: config.electionTicks,
      heartbeatTicks: config.heartbeatTicks,
      requestTimeoutMs: config.requestTimeoutMs,
      pendingRequestsMax: defaultNodeTimings.pendingRequestsMax,
      inboxMessagesMax: defaultNodeTimings.inboxMessagesMax,
      snapshotEntries: config.snapshotEntries,
      snapshotCatchUpEntries: config.snapshotCatchUpEntries,
      ...(config.quotaBytes === undefined ? {} : { quotaBytes: config.quotaBytes }),
      idempotencyWindowMs: config.idempotencyWindowMs,
      idempotencySessionsMax: config.idempotencySessionsMax,
      ...(config.watch === undefined ? {} : { watch: config.watch }),
      log: (event, fields) => {
        if (event === "role" && typeof fields.leaderId === "number" && typeof fields.term === "number") nodeMetrics?.noteLeader(fields.leaderId, fields.term);
        // Where, and what happens next, as the same line at start says (found in a black-box review).
        const more = event === "disk full" ? { dataDir, detail: "the node waits, frozen, and resumes by itself once space is freed on that disk" } : {};
        logger.log(nodeEventLevel(event), event, { ...fields, ...more });
      },
      onFatal: (error) => config.onFatal?.(error),
      voteHold: { recorded: voteHoldRecorded(dataDir), record: (held) => recordVoteHold(dataDir, held) },
    }),
  ).catch((error: unknown) => {
    // With --join (and so perhaps no --cluster) on a data dir bootstrapped by --cluster: say how it
    // starts (found in a black-box review: "configured voters [7] differ" said nothing of --join).
    if (config.join === undefined || !(error instanceof StorageError) || error.code !== "voters_mismatch") throw error;
    throw new StorageError(
      "voters_mismatch",
      `${error.message}: this data dir was started with --cluster naming those voters, and --join only joins with an empty data dir; start it with that --cluster again`,
      error.file,
    );
  });

  nodeMetrics = instrumentNode(node, metrics, { clusterId: clusterIdChoice.clusterId, version: packageJson.version });
  // A large body waits to be read at most as long as a write waits on the node, and never so long
  // that the wait, the body's deadline and the wait on the node outlast Bun's idle timer (below).
  const bodyAdmission = new BodyAdmission(
    LARGE_BODIES_BYTES_MAX_DEFAULT,
    LARGE_BODY_BYTES_MIN,
    Math.min(config.requestTimeoutMs, Math.max(1_000, (idleTimeoutSMax - 5) * 1000 - config.requestTimeoutMs - config.requestReadTimeoutMs)),
  );
  metrics.collected("kv_http_large_body_bytes_admitted", "Bytes of large write bodies (64 KiB or more) being read or waiting on the node now.", "gauge", [], () => [
    [{}, bodyAdmission.admittedBytes()],
  ]);
  // What the data dir takes on disk, and the process's own figures, as Prometheus' clients give them.
  metrics.collected("kv_storage_disk_bytes", "Bytes the data dir takes on disk, by part: the state machine's database, its WAL, the log's segments, an image being staged.", "gauge", ["part"], () => {
    const usage = diskUsage(dataDir);
    return [
      [{ part: "database" }, usage.database],
      [{ part: "wal" }, usage.wal],
      [{ part: "log" }, usage.log],
      [{ part: "staging" }, usage.staging],
    ];
  });
  const startedAtS = Date.now() / 1000 - process.uptime();
  metrics.collected("process_start_time_seconds", "When the process started, in seconds since the Unix epoch.", "gauge", [], () => [[{}, startedAtS]]);
  metrics.collected("process_cpu_seconds_total", "CPU time the process used, user and system, in seconds.", "counter", [], () => {
    const used = process.cpuUsage();
    return [[{}, (used.user + used.system) / 1e6]];
  });
  metrics.collected("kv_http_large_bodies_waiting", "Large write bodies waiting, unread, for their turn to be read.", "gauge", [], () => [[{}, bodyAdmission.waitingCount()]]);
  const http = createHttpHandler(nodeMetrics.node, {
    ...(config.authToken === undefined ? {} : { authToken: config.authToken }),
    metricsOpen: config.metricsOpen,
    metrics,
    keyBytesMax: config.keyBytesMax,
    valueBytesMax: config.valueBytesMax,
    bodyReadTimeoutMs: config.requestReadTimeoutMs,
    bodyAdmission,
    logRefusal: (line) => logger.log("warn", "client refused", { detail: line }),
    logStreamFailure: (event, fields) => logger.log("error", event, fields),
    joinCheck: { token: config.clusterToken },
    clientAddress: (request) => clientListener?.addressOf(request),
  });
  /** Set once the client port listens (the handler names a refused request's address through it). */
  let clientListener: ClientListener | undefined;
  const { listenHttp } = config;
  /** A port that cannot be listened on (taken, not ours): one line, the storage closed, not a stack trace. */
  const cannotListen = async (what: string, hostname: string, port: number, error: unknown): Promise<never> => {
    storage.close();
    await sqliteStorage.released();
    throw new ServerStartError(`cannot listen for ${what} on ${hostname}:${port}: ${errorText(error)}`, 1);
  };
  const listener = await listening(() => createClientListener({
    hostname: listenHttp.hostname,
    port: listenHttp.port,
    ...(tls === undefined ? {} : { tls: { cert: tls.cert, key: tls.key } }),
    handle: (request) => http.handle(request),
    // The handler answers every error itself; this runs only if it threw, which is a bug.
    onInternalError(error) {
      logger.log("error", "http internal error", { error: error.message, stack: error.stack });
      return new Response(JSON.stringify({ error: "internal", message: "internal error" }), {
        status: 500,
        headers: { "content-type": "application/json; charset=utf-8" },
      });
    },
    connectionsMax: config.clientConnectionsMax,
    logRefusedConnection: (line) => logger.log("warn", "client connection refused", { detail: line }),
    requestReadTimeoutMs: config.requestReadTimeoutMs,
    // Bun's own timer cuts a body or a handler at this many seconds with no answer: it must outlast
    // a large body's wait to be read, the body's deadline and the wait on the node, which answer first.
    // A watch stream is silent at most --watch-progress-ms between events: it must not count as idle.
    idleTimeoutS: Math.min(
      idleTimeoutSMax,
      Math.max(
        10,
        Math.ceil((bodyAdmission.waitMsMax + config.requestTimeoutMs + config.requestReadTimeoutMs) / 1000) + 5,
        Math.ceil((config.watch?.progressMs ?? defaultWatch.progressMs) / 1000) + 5,
      ),
    ),
    metrics,
  }), (error) => cannotListen("clients", listenHttp.hostname, listenHttp.port, error));
  clientListener = listener;
  const httpPort = listener.port;
  const hostForUrl = listenHttp.hostname.includes(":") ? `[${listenHttp.hostname}]` : listenHttp.hostname;
  const advertiseHttp = (config.advertiseHttp ?? `${tls === undefined ? "http" : "https"}://${hostForUrl}:${httpPort}`).replace(/\/+$/, "");
  node.setHttpUrl(advertiseHttp);

  const transport = await listening(() => createConnectTransport({
    selfId: id,
    selfHttpUrl: advertiseHttp,
    commandLevel: config.commandLevel ?? COMMAND_LEVEL,
    peers: peerDirectory,
    listen: config.listenPeer,
    onMessages: (messages) => node.receive(messages),
    onSnapshotChunk: (chunk) => node.receiveSnapshotChunk(chunk),
    rpcTimeoutMs: peerRpcTimeoutMs(config.tickMs, config.electionTicks),
    log: (line) => logger.log(peerLineLevel(line), "peer", { detail: line }),
    auth: {
      clusterId: clusterIdChoice.clusterId,
      ...(config.clusterToken === undefined ? {} : { clusterToken: config.clusterToken }),
      clusterNonce: () => node.clusterNonce(),
    },
    ...(tls === undefined ? {} : { tls }),
    ...peerIdentityOf(storage),
    onRemoved: (by, detail) => node.removedByPeer(by, detail),
  }), (error) => {
    void listener.stop(true).catch(() => {});
    return cannotListen("peers", config.listenPeer.hostname, config.listenPeer.port, error);
  });
  registerTransportMetrics(metrics, transport, () => node.raftStatus().role === "leader");
  node.start(transport.transport);
  logger.log("info", "started", {
    peerPort: transport.port,
    httpPort,
    httpUrl: advertiseHttp,
    dataDir,
    storageWrites: storageThread ? "storage thread" : "loop's thread",
    // The configuration the node runs with: --cluster's only until a membership change (or a join, a restore) recorded another.
    voters: sqliteStorage.membership().voters,
    clusterId: clusterIdChoice.clusterId,
    peerAuth: config.clusterToken === undefined ? "none" : "cluster-token",
    tls: tls === undefined ? "none" : tls.ca === undefined ? "server" : "server, mutual between peers",
    clientAuth: config.authToken === undefined ? "none" : config.metricsOpen ? "bearer-token (status and metrics open)" : "bearer-token",
    term: node.status().term,
    appliedIndex: node.status().appliedIndex,
  });

  // How late a 10 ms timer fires: the time the loop's thread was busy with something else (a long
  // sqlite call, GC, parsing a large body). Past the election timeout, followers stop hearing from us.
  const loopLag = metrics.histogram(
    "kv_event_loop_lag_seconds",
    "How late a 10 ms timer on the node's thread fired: how long the thread was held by other work.",
    LATENCY_BUCKETS_S,
  );
  let lagDueMs = performance.now() + LOOP_LAG_PROBE_MS;
  const lagProbe = setInterval(() => {
    const nowMs = performance.now();
    loopLag.observe({}, Math.max(0, nowMs - lagDueMs) / 1000);
    lagDueMs = nowMs + LOOP_LAG_PROBE_MS;
  }, LOOP_LAG_PROBE_MS);

  let stopping: Promise<void> | undefined;
  async function stopServing(handOver: boolean, reason: string): Promise<void> {
    logger.log(handOver ? "info" : "error", "stopping", { reason, inflightRequests: http.inflightRequests(), watchStreams: http.openStreams() });
    if (handOver && node.status().role === "leader" && node.members().members.filter((member) => member.role === "voter").length > 1) {
      // Hand over before leaving so a rolling restart costs no election timeout (thesis §3.10).
      // Requests keep being served meanwhile; writes are redirected once another node leads.
      const handover = await node.transferLeadership(undefined).then(
        ({ leaderId }) => ({ leaderId }),
        (error: unknown) => ({ error: errorText(error) }),
      );
      // Said as what happened: a rolling restart's operator looks for this line (found in a black-box
      // review: "leadership handed over" was logged, at info, when the transfer was given up).
      if ("error" in handover || handover.leaderId === 0) {
        logger.log("warn", "leadership handover failed", { ...handover, detail: "stopping without handing over: the others elect a leader after an election timeout" });
      } else {
        logger.log("info", "leadership handed over", handover);
      }
    }
    // Stop taking work: new requests on open connections get 503 `unavailable` and Connection:
    // close, and the listener stops accepting connections.
    clearInterval(lagProbe);
    http.beginShutdown();
    void listener.stop(false).catch(() => {});
    // Every request waiting on the node (writes, linearizable reads) now fails with `unavailable`:
    // a clear answer, sent before the connections close.
    node.stop();
    // The cap's timer is cleared once the drain ends: left armed it would keep a process that runs
    // servers in-process (a test, an embedder) alive for the rest of the cap after stop() resolved.
    let drainTimer: ReturnType<typeof setTimeout> | undefined;
    const drained = await Promise.race([
      http.idle().then(() => true),
      new Promise<boolean>((resolve) => (drainTimer = setTimeout(() => resolve(false), SHUTDOWN_DRAIN_MS_MAX))),
    ]);
    clearTimeout(drainTimer);
    if (!drained) {
      logger.log("warn", "stopping", {
        detail: `${http.inflightRequests()} requests still unanswered (clients still sending bodies) and ${http.openStreams()} watch streams still sending (clients not reading) after ${SHUTDOWN_DRAIN_MS_MAX} ms; closing their connections`,
      });
    }
    await listener.stop(true).catch(() => {});
    await transport.transport.close().catch(() => {});
    // Last: no request can reach the storage any more. A clean close checkpoints the WAL.
    storage.close();
    // stop() resolves once the storage holds no descriptor (its checkpointer's worker has ended):
    // a process running servers in-process can reopen or remove the data dir at once.
    await sqliteStorage.released();
  }
  server = {
    node,
    httpPort,
    httpUrl: advertiseHttp,
    peerPort: transport.port,
    clusterId: clusterIdChoice.clusterId,
    stop(options = {}) {
      stopping ??= stopServing(options.handOver ?? true, options.reason ?? "stop");
      return stopping;
    },
  };
  return server;
}

/** The mode a new data dir (and any parent created with it) is made with: the owner's only. */
const DATA_DIR_MODE = 0o700;

/**
 * Runs `attempt` (a step of starting that writes to the data dir), retrying every DISK_RETRY_MS while
 * the disk is full: one log line when it first is, one when space is back; any other error is thrown.
 */
async function retryWhileDiskFull<T>(what: string, dataDir: string, logger: Logger, attempt: () => T | Promise<T>): Promise<T> {
  let waiting = false;
  for (;;) {
    try {
      const result = await attempt();
      if (waiting) logger.log("info", "disk space back", { detail: `could ${what}: starting` });
      return result;
    } catch (error) {
      if (!isDiskFull(error)) throw startError(what, dataDir, error);
      if (!waiting) {
        logger.log("error", "disk full", {
          detail: `cannot ${what}: the disk holding ${dataDir} is full; waiting for space (retrying every ${DISK_RETRY_MS} ms; free space or stop the node)`,
          error: errorText(error),
        });
      }
      waiting = true;
      await Bun.sleep(DISK_RETRY_MS);
    }
  }
}

/**
 * An error of a step of starting as the operator should read it: storage's own errors (they name
 * what and where), else a one-line `ServerStartError` for what the system refused (a read-only or
 * missing directory, a file that is not a database: before, a minified stack trace), else as is.
 */
function startError(what: string, where: string, error: unknown): unknown {
  if (error instanceof StorageError || error instanceof ServerStartError || !(error instanceof Error)) return error;
  const code = (error as { code?: unknown }).code;
  // A database SQLite cannot read is a damaged data dir, as a damaged log is: said so, with the way
  // back (found in a black-box review: `file is not a database` alone, no next step).
  if (code === "SQLITE_NOTADB" || code === "SQLITE_CORRUPT") return new StorageError("corrupt", `cannot ${what}: ${error.message}`, where, undefined, { cause: error });
  if (code === "SQLITE_CANTOPEN" && notAFile(join(where, DATABASE_FILE))) {
    return new ServerStartError(`cannot ${what} (${where}): ${join(where, DATABASE_FILE)} is not a file (a directory?): move it aside, or give another --data-dir`, 1);
  }
  // SQLite says only "unable to open database file" (or "attempt to write a readonly database"):
  // said with who may not and what to do.
  if (["SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "EACCES", "EPERM"].includes(String(code)) && existsSync(where) && !mayReadAndWrite(where)) {
    return new ServerStartError(
      `cannot ${what} (${where}): this process (uid ${process.getuid?.() ?? "?"}) may not read and write the data dir: run kv as the user that owns it, or give it to kv's user (chown -R)`,
      1,
    );
  }
  // Said as such, not as mkdir's EEXIST alone (found in a black-box review).
  if (code === "EEXIST" && notADirectory(where)) return new ServerStartError(`cannot ${what} (${where}): it exists and is not a directory: give another --data-dir`, 1);
  const operating = error.name === "SQLiteError" || (typeof code === "string" && /^E[A-Z]+$/.test(code));
  return operating ? new ServerStartError(`cannot ${what} (${where}): ${error.message}`, 1) : error;
}

/** Whether `path` exists as something other than a directory. */
function notADirectory(path: string): boolean {
  try {
    return !statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** Whether this process may list, read and write `dir` and the database in it (when there is one). */
function mayReadAndWrite(dir: string): boolean {
  try {
    accessSync(dir, constants.R_OK | constants.W_OK | constants.X_OK);
    const database = join(dir, DATABASE_FILE);
    if (existsSync(database)) accessSync(database, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Whether `path` exists as something other than a regular file. */
function notAFile(path: string): boolean {
  try {
    return !statSync(path).isFile();
  } catch {
    return false;
  }
}

/** `open()`, or what `failed` makes of its error. */
/** Why `hostname:port` cannot be listened on now (taken, not ours), or undefined when it can; port 0 always can. */
function portTaken(hostname: string, port: number): string | undefined {
  if (port === 0) return undefined;
  try {
    Bun.listen({ hostname, port, socket: { data() {} } }).stop(true);
    return undefined;
  } catch (error) {
    return errorText(error);
  }
}

async function listening<T>(open: () => T, failed: (error: unknown) => Promise<never>): Promise<T> {
  try {
    return open();
  } catch (error) {
    return failed(error);
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
