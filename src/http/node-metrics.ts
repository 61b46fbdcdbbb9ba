/**
 * The node's metrics, without touching the node: Raft state read from `status()` at scrape time,
 * and the outcomes and latencies of writes and linearizable reads observed by wrapping the
 * `KvNodeApi` the client API calls.
 */
import { KvError } from "../lib/kv-error.ts";
import type { MetricsRegistry } from "../lib/metrics.ts";
import { LATENCY_BUCKETS_S } from "../lib/metrics.ts";
import type { KvNodeApi, MembersView, NodeStatus, WatchSubscription } from "../node/api.ts";
import { txnWrites } from "../kv/txn.ts";

/** Role names as exported: every one is present, 1 for the current role, 0 for the others. */
const roles = ["follower", "candidate", "leader"] as const;

/** A node wrapped for metrics, and what the loop's events feed in. */
export interface NodeMetrics {
  /** The same node: every call is forwarded, its outcome counted. */
  readonly node: KvNodeApi;
  /** Tell the metrics which leader the node now follows (0: none) and in which term, from the loop's role events. */
  noteLeader(leaderId: number, term: number): void;
}

/** Declares the node's metrics on `registry` and returns the wrapped node. */
export function instrumentNode(node: KvNodeApi, registry: MetricsRegistry, info: { clusterId: string; version: string }): NodeMetrics {
  let status: NodeStatus = node.status();
  registry.onCollect(() => {
    status = node.status();
  });
  registry.collected("kv_info", "Constant 1, labelled with this node's id, cluster id and version.", "gauge", ["id", "cluster_id", "version"], () => [
    [{ id: String(status.id), cluster_id: info.clusterId, version: info.version }, 1],
  ]);
  registry.collected("kv_raft_term", "The node's current Raft term.", "gauge", [], () => [[{}, status.term]]);
  registry.collected("kv_raft_role", "1 for the node's current Raft role, 0 for the others.", "gauge", ["role"], () =>
    roles.map((role) => [{ role }, status.role === role ? 1 : 0] as const),
  );
  registry.collected("kv_raft_leader_id", "The leader this node follows; 0 when none is known.", "gauge", [], () => [[{}, status.leaderId]]);
  registry.collected("kv_raft_commit_index", "Highest log index known committed.", "gauge", [], () => [[{}, status.commitIndex]]);
  registry.collected("kv_raft_applied_index", "Highest log index applied to the key-value state.", "gauge", [], () => [[{}, status.appliedIndex]]);
  registry.collected("kv_raft_last_log_index", "Index of the last entry in the local log.", "gauge", [], () => [[{}, status.lastLogIndex]]);
  registry.collected(
    "kv_raft_follower_lag_entries",
    "On the leader only, for each other member: entries of the leader's log not known to be in that member's (last log index - match index). Grows while a member is down under writes.",
    "gauge",
    ["peer"],
    () => (status.role === "leader" ? status.members.flatMap((member) => (member.matchIndex === undefined ? [] : [[{ peer: String(member.id) }, Math.max(0, status.lastLogIndex - member.matchIndex)] as const])) : []),
  );
  // What /status's storage says, for alerts before the quota or the disk refuses writes (etcd's db size and quota gauges).
  if (status.storage !== undefined) {
    const storageOf = () => status.storage as NonNullable<NodeStatus["storage"]>;
    registry.collected("kv_storage_data_bytes", "Bytes of data this node keeps, as counted against --quota-bytes (measured about every ten ticks).", "gauge", [], () => [[{}, storageOf().dataBytes]]);
    registry.collected("kv_storage_quota_bytes", "--quota-bytes; 0: no quota.", "gauge", [], () => [[{}, storageOf().quotaBytes]]);
    registry.collected("kv_storage_quota_exceeded", "1 while the data kept is at or past the quota (puts are refused), else 0.", "gauge", [], () => [[{}, storageOf().quotaExceeded ? 1 : 0]]);
    registry.collected("kv_storage_disk_full", "1 while the disk refused a write and the node is frozen until space returns, else 0.", "gauge", [], () => [[{}, storageOf().diskFull ? 1 : 0]]);
  }
  registry.collected("kv_removed", "1 once this node applied its own removal from the cluster (it serves nothing), else 0.", "gauge", [], () => [[{}, status.removed === true ? 1 : 0]]);

  const leaderChanges = registry.counter(
    "kv_raft_leader_changes_total",
    "Times this node saw a leader elected: a known leader other than the previous one, or the same one in a new term.",
  );
  const committed = registry.counter("kv_proposals_committed_total", "Writes committed and applied, by operation.", ["op"]);
  const failed = registry.counter(
    "kv_proposals_failed_total",
    "Writes the node accepted but that did not commit, by operation and error code (timeout: outcome unknown).",
    ["op", "reason"],
  );
  const readIndexDuration = registry.histogram(
    "kv_read_index_duration_seconds",
    "Linearizable reads (GET /kv/{key}, and transactions of gets alone): from arrival until the read index is confirmed and applied, the value read.",
    LATENCY_BUCKETS_S,
  );

  // The process's memory, as Prometheus's process collectors name RSS, and where JavaScript keeps it.
  registry.collected("process_resident_memory_bytes", "Resident memory of this process.", "gauge", [], () => [[{}, process.memoryUsage.rss()]]);
  registry.collected("kv_js_memory_bytes", "Memory the JavaScript runtime holds, by kind (heap_used; array_buffers: bytes of ArrayBuffers, values and log entries among them).", "gauge", ["kind"], () => {
    const usage = process.memoryUsage();
    return [
      [{ kind: "heap_used" }, usage.heapUsed],
      [{ kind: "array_buffers" }, usage.arrayBuffers],
    ];
  });

  let watchers = 0;
  registry.collected("kv_watchers", "Watch streams open now.", "gauge", [], () => [[{}, watchers]]);
  const watchEventsSent = registry.counter("kv_watch_events_sent_total", "Watch events handed to clients, by event (put, delete, progress, error).", ["event"]);
  const watchSlowClosed = registry.counter("kv_watch_slow_closed_total", "Watch streams ended with slow_watcher: their bounded buffer overflowed.");
  const watchCompactedClosed = registry.counter(
    "kv_watch_compacted_closed_total",
    "Watch streams ended with compacted: a snapshot installed here, or the change history's turnover, dropped changes they had not sent.",
  );
  /** Counts a stream while open (once, however it ends) and every event it hands out. */
  function countedWatch(subscription: WatchSubscription): WatchSubscription {
    watchers++;
    let open = true;
    const closed = () => {
      if (open) watchers--;
      open = false;
    };
    return {
      async next() {
        const items = await subscription.next();
        if (items === undefined) {
          closed();
          return undefined;
        }
        for (const item of items) {
          watchEventsSent.inc({ event: item.type === "change" ? item.change.kind : item.type });
          if (item.type === "error" && item.error === "slow_watcher") watchSlowClosed.inc({});
          if (item.type === "error" && item.error === "compacted") watchCompactedClosed.inc({});
        }
        return items;
      },
      close() {
        closed();
        subscription.close();
      },
    };
  }

  /** Membership answers carry the cluster id: a server joining with `kv serve --join` adopts it. */
  const withClusterId = (view: MembersView): MembersView => ({ ...view, clusterId: info.clusterId });
  // The leader last known, and its term: the same node elected again in a later term counts too
  // (counted by leader alone, a leader that lost and won back the leadership went unseen).
  let lastLeader = { id: status.leaderId, term: status.term };
  /** Writes: a synchronous throw is a refusal before proposing (not_leader); a rejection is a failed proposal. */
  function write<T>(op: "put" | "delete" | "delete_prefix" | "txn", start: () => Promise<T>): Promise<T> {
    const pending = start();
    return pending.then(
      (result) => {
        committed.inc({ op });
        return result;
      },
      (error: unknown) => {
        failed.inc({ op, reason: error instanceof KvError ? error.code : "internal" });
        throw error;
      },
    );
  }

  const snapshotStats = node.snapshotStats?.bind(node);
  if (snapshotStats !== undefined) {
    const counters = [
      ["kv_snapshots_sent_total", "Snapshot images this node streamed to followers whose logs were compacted past what they lacked, since it started.", "sent"],
      ["kv_snapshots_send_failed_total", "Snapshot images this node began streaming to a follower and did not finish (the follower refused or went away, or the term ended), since it started.", "sendFailed"],
      ["kv_snapshots_received_total", "Snapshot images this node received whole from its leader, since it started.", "received"],
      ["kv_snapshots_installed_total", "Snapshot images this node installed in place of its state machine and log, since it started.", "installed"],
    ] as const;
    for (const [name, help, field] of counters) registry.collected(name, help, "counter", [], () => [[{}, snapshotStats()[field]]]);
  }
  const leaseStats = node.leaseStats?.bind(node);
  if (leaseStats !== undefined) {
    registry.collected("kv_leases", "Leases in this node's applied state.", "gauge", [], () => [[{}, leaseStats().leases]]);
    registry.collected("kv_lease_expired_total", "Leases whose expiry applied on this node since it started.", "counter", [], () => [[{}, leaseStats().expiredTotal]]);
  }

  const wrapped: KvNodeApi = {
    put: (key, value, options) => write("put", () => node.put(key, value, options)),
    refuseWriteUnlessLeader: () => node.refuseWriteUnlessLeader(),
    delete: (key, options) => write("delete", () => node.delete(key, options)),
    async get(key, consistency) {
      if (consistency !== "linearizable") return node.get(key, consistency);
      const startedMs = performance.now();
      const value = await node.get(key, consistency);
      readIndexDuration.observe({}, (performance.now() - startedMs) / 1000);
      return value;
    },
    list: (prefix, after, limit, consistency, bytesMax) => node.list(prefix, after, limit, consistency, bytesMax),
    status: () => node.status(),
    healthy: () => node.healthy(),
    transferLeadership: (target) => node.transferLeadership(target),
    ...(node.members === undefined ? {} : { members: () => withClusterId(node.members!()) }),
    ...(node.currentMembers === undefined ? {} : { currentMembers: () => node.currentMembers!().then(withClusterId) }),
    ...(node.txn === undefined
      ? {}
      : {
          // One of gets alone is a linearizable read (KvNode.txn), timed as one; it proposes nothing.
          txn: async (request, options) => {
            if (txnWrites(request)) return write("txn", () => node.txn!(request, options));
            const startedMs = performance.now();
            const answer = await node.txn!(request, options);
            readIndexDuration.observe({}, (performance.now() - startedMs) / 1000);
            return answer;
          },
        }),
    ...(node.deletePrefix === undefined ? {} : { deletePrefix: (prefix, limit, options) => write("delete_prefix", () => node.deletePrefix!(prefix, limit, options)) }),
    ...(node.watch === undefined ? {} : { watch: async (filter, start) => countedWatch(await node.watch!(filter, start)) }),
    ...(node.openSnapshot === undefined ? {} : { openSnapshot: (consistency) => node.openSnapshot!(consistency) }),
    ...(node.grantLease === undefined ? {} : { grantLease: (ttlMs: number) => node.grantLease!(ttlMs) }),
    ...(node.keepAliveLease === undefined ? {} : { keepAliveLease: (id: number) => node.keepAliveLease!(id) }),
    ...(node.leaseInfo === undefined ? {} : { leaseInfo: (id: number) => node.leaseInfo!(id) }),
    ...(node.listLeases === undefined ? {} : { listLeases: (after: number | undefined, limit: number) => node.listLeases!(after, limit) }),
    ...(node.revokeLease === undefined ? {} : { revokeLease: (id: number) => node.revokeLease!(id) }),
    ...(leaseStats === undefined ? {} : { leaseStats }),
    ...(snapshotStats === undefined ? {} : { snapshotStats }),
    ...(node.addMember === undefined ? {} : { addMember: (id: number, peerUrl: string, httpUrl?: string) => node.addMember!(id, peerUrl, httpUrl).then(withClusterId) }),
    ...(node.removeMember === undefined ? {} : { removeMember: (id: number) => node.removeMember!(id).then(withClusterId) }),
    ...(node.promoteMember === undefined ? {} : { promoteMember: (id: number) => node.promoteMember!(id).then(withClusterId) }),
  };
  return {
    node: wrapped,
    noteLeader(leaderId, term) {
      if (leaderId === 0) return;
      if (leaderId !== lastLeader.id || term !== lastLeader.term) leaderChanges.inc({});
      lastLeader = { id: leaderId, term };
    },
  };
}
