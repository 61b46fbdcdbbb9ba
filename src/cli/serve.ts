import { mkdirSync } from "node:fs";
import { defineCommand } from "citty";
import { createHttpApp } from "../http/app.ts";
import { createSystemClock } from "../lib/clock.ts";
import { createPrng } from "../lib/prng.ts";
import { defaultNodeTimings, KvNode } from "../node/kv-node.ts";
import { openSqliteStorage } from "../storage/sqlite-storage.ts";
import { createConnectTransport } from "../transport/connect-transport.ts";
import { createLogger, type LogLevel } from "./logger.ts";
import { localCluster, parseCluster, parseHostPort, parseIntFlag, UsageError } from "./usage-error.ts";

/** `kv serve`: runs one node until SIGTERM or SIGINT. */
export const serveCommand = defineCommand({
  meta: { name: "serve", description: "Run one node of a kv cluster (default: node N of the local 3-node cluster)" },
  args: {
    id: { type: "string", required: true, description: "This node's id (1, 2, 3, ...)", valueHint: "N" },
    cluster: {
      type: "string",
      description: "Every voter's peer URL as this node reaches it (default: the local three on ports 5001-5003)",
      valueHint: "1=http://127.0.0.1:5001,2=...,3=...",
    },
    "listen-peer": { type: "string", description: "Peer (Raft) listen address (default: host:port of this node's --cluster entry)", valueHint: "host:port" },
    "listen-http": { type: "string", description: "Client HTTP listen address (default: 127.0.0.1:800N)", valueHint: "host:port" },
    "advertise-http": { type: "string", description: "Client URL peers learn for redirects (default: http:// + listen-http)", valueHint: "URL" },
    "data-dir": { type: "string", description: "Where the log and state machine live (default: ./data/node-N)", valueHint: "DIR" },
    "tick-ms": { type: "string", description: `Length of one Raft tick in ms (default ${defaultNodeTimings.tickMs})`, valueHint: "MS" },
    "election-ticks": { type: "string", description: `Election timeout in ticks, randomized up to 2x (default ${defaultNodeTimings.electionTicks})`, valueHint: "N" },
    "heartbeat-ticks": { type: "string", description: `Heartbeat interval in ticks (default ${defaultNodeTimings.heartbeatTicks})`, valueHint: "N" },
    "request-timeout-ms": { type: "string", description: `How long a write or read may wait (default ${defaultNodeTimings.requestTimeoutMs})`, valueHint: "MS" },
    "log-level": { type: "string", description: "debug, info, warn or error (default info)", valueHint: "LEVEL" },
  },
  async run({ args }) {
    const id = parseIntFlag("id", args.id, 1, 1_000_000);
    const peers = args.cluster === undefined ? localCluster() : parseCluster(args.cluster);
    const selfPeerUrl = peers.get(id);
    if (selfPeerUrl === undefined) throw new UsageError(`--cluster has no entry for node ${id}`);
    const selfPeer = new URL(selfPeerUrl);
    const listenPeer = parseHostPort("listen-peer", args["listen-peer"] ?? `${selfPeer.hostname}:${selfPeer.port || 80}`);
    const listenHttp = parseHostPort("listen-http", args["listen-http"] ?? `127.0.0.1:${8000 + id}`);
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
    const logLevel = (args["log-level"] ?? "info") as LogLevel;
    if (!["debug", "info", "warn", "error"].includes(logLevel)) throw new UsageError(`--log-level must be debug, info, warn or error`);
    const dataDir = args["data-dir"] ?? `./data/node-${id}`;

    const logger = createLogger(id, logLevel);
    mkdirSync(dataDir, { recursive: true });
    const storage = openSqliteStorage(dataDir);
    const clock = createSystemClock();
    let advertiseHttp = args["advertise-http"];
    const node = new KvNode({
      id,
      peers,
      httpUrl: "", // set below once the HTTP port is bound
      storage,
      clock,
      prng: createPrng((Date.now() ^ (id * 2654435761)) >>> 0),
      tickMs,
      electionTicks,
      heartbeatTicks,
      requestTimeoutMs,
      pendingRequestsMax: defaultNodeTimings.pendingRequestsMax,
      inboxMessagesMax: defaultNodeTimings.inboxMessagesMax,
      log: (event, fields) => logger.log(event === "fatal" ? "error" : "info", event, fields),
      onFatal: (error) => {
        logger.log("error", "stopping", { reason: error.message });
        void shutdown(1);
      },
    });

    const app = createHttpApp(node, {});
    app.listen({ hostname: listenHttp.hostname, port: listenHttp.port });
    const httpPort = app.server?.port ?? listenHttp.port;
    advertiseHttp ??= `http://${listenHttp.hostname.includes(":") ? `[${listenHttp.hostname}]` : listenHttp.hostname}:${httpPort}`;
    node.setHttpUrl(advertiseHttp.replace(/\/+$/, ""));

    const others = new Map([...peers].filter(([peerId]) => peerId !== id));
    const transport = createConnectTransport({
      selfId: id,
      selfHttpUrl: advertiseHttp,
      peers: others,
      listen: listenPeer,
      onMessages: (messages) => node.receive(messages),
      rpcTimeoutMs: Math.max(200, tickMs * electionTicks),
      log: (line) => logger.log("warn", "peer", { detail: line }),
    });
    node.start(transport.transport);
    logger.log("info", "started", {
      peerPort: transport.port,
      httpPort,
      httpUrl: advertiseHttp,
      dataDir,
      voters: [...peers.keys()],
      term: node.status().term,
      appliedIndex: node.status().appliedIndex,
    });

    let stopping = false;
    async function shutdown(code: number): Promise<void> {
      if (stopping) return;
      stopping = true;
      if (code === 0 && node.status().role === "leader") {
        // Hand over before leaving so a rolling restart costs no election timeout (thesis §3.10).
        const handover = await node.transferLeadership(undefined).then(
          ({ leaderId }) => ({ leaderId }),
          (error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }),
        );
        logger.log("info", "leadership handed over", handover);
      }
      node.stop();
      await app.stop(true).catch(() => {});
      await transport.transport.close().catch(() => {});
      storage.close();
      logger.log("info", "stopped", { code });
      process.exit(code);
    }
    process.on("SIGTERM", () => void shutdown(0));
    process.on("SIGINT", () => void shutdown(0));
    await new Promise<never>(() => {});
  },
});
