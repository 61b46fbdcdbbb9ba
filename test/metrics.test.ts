// Proves /metrics speaks the Prometheus text format (the registry's counters, gauges and labelled histograms render and stay bounded) and that a live 3-node cluster reports its Raft state, proposals, fsync and request latencies, ReadIndex latency, leader changes and peer traffic and errors.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";
import { createMetricsRegistry, PROMETHEUS_CONTENT_TYPE } from "../src/lib/metrics.ts";
import { encodeCommand } from "../src/kv/command.ts";
import { createHttpHandler, routeLabel } from "../src/http/http-handler.ts";
import { MemoryKvNode } from "../src/http/memory-kv-node.ts";
import { instrumentNode } from "../src/http/node-metrics.ts";
import { registerTransportMetrics } from "../src/transport/transport-metrics.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";
import type { KvNodeApi } from "../src/node/api.ts";

/** Every sample line parsed: `name{labels}` → value. Throws on a line that is not valid exposition text. */
function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const typed = new Set<string>();
  expect(text.endsWith("\n")).toBe(true);
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$/.exec(line);
    if (type !== null) {
      expect(typed.has(type[1]!)).toBe(false);
      typed.add(type[1]!);
      continue;
    }
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/.exec(line);
    if (sample === null) throw new Error(`not an exposition line: ${JSON.stringify(line)}`);
    const series = `${sample[1]}${sample[2] ?? ""}`;
    expect(samples.has(series)).toBe(false);
    samples.set(series, Number(sample[3] === "+Inf" ? Infinity : sample[3]));
  }
  return samples;
}

describe("the metrics registry", () => {
  test("renders counters, gauges and histograms with labels in the text format", () => {
    const registry = createMetricsRegistry();
    const requests = registry.counter("test_requests_total", "Requests.\nBy route.", ["route", "status"]);
    const temperature = registry.gauge("test_temperature", "A gauge.");
    const latency = registry.histogram("test_latency_seconds", "A histogram.", [0.1, 1], ["route"]);
    let collectedValue = 0;
    registry.onCollect(() => {
      collectedValue = 42;
    });
    registry.collected("test_collected", "Read at scrape time.", "gauge", ["peer"], () => [[{ peer: "2" }, collectedValue]]);
    requests.inc({ route: "/kv/{key}", status: "200" });
    requests.inc({ route: "/kv/{key}", status: "200" }, 2);
    requests.inc({ route: 'we"ird\\path\n', status: "404" });
    temperature.set({}, -3.5);
    latency.observe({ route: "a" }, 0.05);
    latency.observe({ route: "a" }, 0.5);
    latency.observe({ route: "a" }, 7);

    const text = registry.render();
    expect(text).toContain("# HELP test_requests_total Requests.\\nBy route.\n# TYPE test_requests_total counter\n");
    expect(text).toContain('test_requests_total{route="we\\"ird\\\\path\\n",status="404"} 1\n');
    const samples = parseExposition(text);
    expect(samples.get('test_requests_total{route="/kv/{key}",status="200"}')).toBe(3);
    expect(samples.get("test_temperature")).toBe(-3.5);
    expect(samples.get('test_latency_seconds_bucket{route="a",le="0.1"}')).toBe(1);
    expect(samples.get('test_latency_seconds_bucket{route="a",le="1"}')).toBe(2);
    expect(samples.get('test_latency_seconds_bucket{route="a",le="+Inf"}')).toBe(3);
    expect(samples.get('test_latency_seconds_sum{route="a"}')).toBeCloseTo(7.55);
    expect(samples.get('test_latency_seconds_count{route="a"}')).toBe(3);
    expect(samples.get('test_collected{peer="2"}')).toBe(42);
    expect(samples.get("kv_metrics_series_dropped_total")).toBe(0);
  });

  test("a metric without labels shows zero from the start", () => {
    const registry = createMetricsRegistry();
    registry.counter("test_events_total", "Events.");
    registry.histogram("test_wait_seconds", "Waits.", [1]);
    const samples = parseExposition(registry.render());
    expect(samples.get("test_events_total")).toBe(0);
    expect(samples.get('test_wait_seconds_bucket{le="+Inf"}')).toBe(0);
    expect(samples.get("test_wait_seconds_count")).toBe(0);
  });

  test("label combinations beyond the limit are dropped and counted, never stored", () => {
    const registry = createMetricsRegistry({ seriesMax: 3 });
    const counter = registry.counter("test_by_key_total", "Unbounded on purpose.", ["key"]);
    for (let i = 0; i < 100; i++) counter.inc({ key: String(i) });
    const samples = parseExposition(registry.render());
    expect([...samples.keys()].filter((series) => series.startsWith("test_by_key_total"))).toHaveLength(3);
    expect(samples.get("kv_metrics_series_dropped_total")).toBe(97);
  });

  test("programmer errors are assertions: a name twice, a bad name, a counter going down", () => {
    const registry = createMetricsRegistry();
    const counter = registry.counter("test_once_total", "Once.");
    expect(() => registry.gauge("test_once_total", "Again.")).toThrow("declared twice");
    expect(() => registry.gauge("bad-name", "Bad.")).toThrow("bad metric name");
    expect(() => registry.gauge("test_le", "Reserved label.", ["le"])).toThrow("bad label name");
    expect(() => counter.inc({}, -1)).toThrow("cannot go down");
  });
});

describe("GET /metrics on a live 3-node cluster (in-process servers)", () => {
  let cluster: ServerCluster;
  let baseDir: string;

  beforeAll(async () => {
    baseDir = mkdtempSync(join(tmpdir(), "kv-metrics-test-"));
    cluster = createServerCluster({ size: 3, baseDir });
    await cluster.start();
  });

  afterAll(async () => {
    await cluster?.stop();
    rmSync(baseDir, { recursive: true, force: true });
  });

  async function scrape(id: number): Promise<Map<string, number>> {
    const response = await fetch(`${cluster.node(id).httpUrl}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe(PROMETHEUS_CONTENT_TYPE);
    return parseExposition(await response.text());
  }

  test("reports Raft state, proposals, fsync and request latencies, ReadIndex latency and peer bytes", async () => {
    const leader = await cluster.waitForLeader();
    const follower = cluster.nodes.find((node) => node.id !== leader)!.id;
    for (let i = 0; i < 10; i++) {
      expect((await fetch(`${cluster.node(leader).httpUrl}/kv/k${i}`, { method: "PUT", body: `v${i}` })).status).toBe(200);
    }
    expect((await fetch(`${cluster.node(follower).httpUrl}/kv/k0`)).status).toBe(200); // a linearizable read on a follower
    expect((await fetch(`${cluster.node(leader).httpUrl}/kv/missing-key`)).status).toBe(404);
    // A transaction of gets alone is a read (no entry): timed as one, never counted as a proposal.
    const readOnly = JSON.stringify({ success: [{ get: { key: "k1" } }] });
    expect((await fetch(`${cluster.node(leader).httpUrl}/txn`, { method: "POST", body: readOnly })).status).toBe(200);
    expect((await fetch(`${cluster.node(follower).httpUrl}/txn`, { method: "POST", body: readOnly, redirect: "manual" })).status).toBe(200);

    const status = (await cluster.status(leader))!;
    const samples = await scrape(leader);
    expect(samples.get("kv_raft_term")).toBe(status.term);
    expect(samples.get('kv_raft_role{role="leader"}')).toBe(1);
    expect(samples.get('kv_raft_role{role="follower"}')).toBe(0);
    expect(samples.get("kv_raft_leader_id")).toBe(leader);
    expect(samples.get("kv_raft_commit_index")).toBeGreaterThanOrEqual(10);
    expect(samples.get("kv_raft_applied_index")).toBeGreaterThanOrEqual(10);
    expect(samples.get("kv_raft_leader_changes_total")).toBeGreaterThanOrEqual(1);
    // The data kept against the quota, as /status has it (found by an operator's review: only /status had it).
    // (It is measured every ten ticks or so, so it is not compared with the /status read before.)
    expect(samples.get("kv_storage_data_bytes")).toBeGreaterThan(0);
    expect(samples.get("kv_storage_quota_bytes")).toBe((status.storage as { quotaBytes: number }).quotaBytes);
    expect(samples.get("kv_storage_quota_exceeded")).toBe(0);
    expect(samples.get("kv_storage_disk_full")).toBe(0);
    expect(samples.get("kv_removed")).toBe(0);
    expect(samples.get('kv_proposals_committed_total{op="put"}')).toBe(10);
    // Saves are written at once and fsynced in the background, several saves per fsync at most.
    expect(samples.get('kv_storage_save_duration_seconds_count{sync="false"}')).toBeGreaterThanOrEqual(10);
    expect(samples.get("kv_storage_fsync_duration_seconds_count")).toBeGreaterThanOrEqual(1);
    expect(samples.get('kv_http_request_duration_seconds_count{route="/kv/{key}",method="PUT",status="200"}')).toBe(10);
    expect(samples.get('kv_http_request_duration_seconds_count{route="/kv/{key}",method="GET",status="404"}')).toBe(1);
    expect(samples.get("kv_read_index_duration_seconds_count")).toBe(2);
    expect(samples.get('kv_proposals_committed_total{op="txn"}') ?? 0).toBe(0);
    // Every put's entry went to the follower at least once, inside the request bodies counted.
    let entryBytes = 0;
    for (let i = 0; i < 10; i++) entryBytes += encodeCommand({ op: "put", key: `k${i}`, value: new TextEncoder().encode(`v${i}`) }).byteLength;
    expect(samples.get(`kv_peer_sent_bytes_total{peer="${follower}"}`)).toBeGreaterThan(entryBytes);
    expect(samples.get(`kv_peer_calls_delivered_total{peer="${follower}"}`)).toBeGreaterThan(0);
    expect([...samples.keys()].some((series) => series.startsWith("kv_info{id="))).toBe(true);
    // The process's memory (here the test's own process, which runs the nodes).
    expect(samples.get("process_resident_memory_bytes")).toBeGreaterThan(10 << 20);
    expect(samples.get('kv_js_memory_bytes{kind="heap_used"}')).toBeGreaterThan(0);
    expect(samples.get('kv_js_memory_bytes{kind="array_buffers"}')).toBeGreaterThan(0);

    const followerSamples = await scrape(follower);
    // Peer calls arrive at the follower (the leader's appends). The leader itself may receive none:
    // its followers' answers can all ride back in the answers to its own calls.
    expect(followerSamples.get("kv_peer_received_bytes_total")).toBeGreaterThan(entryBytes);
    expect(followerSamples.get('kv_peer_requests_total{status="200"}')).toBeGreaterThan(0);
    // Its GET and its transaction of gets, each timed as a read.
    expect(followerSamples.get("kv_read_index_duration_seconds_count")).toBe(2);
    // Neither is a failed proposal.
    expect(followerSamples.get('kv_proposals_failed_total{op="txn",reason="not_leader"}') ?? 0).toBe(0);
    expect(followerSamples.get('kv_raft_role{role="follower"}')).toBe(1);
    expect(followerSamples.get("kv_raft_leader_id")).toBe(leader);
    expect(followerSamples.get('kv_storage_save_duration_seconds_count{sync="false"}')).toBeGreaterThan(0);
    expect(followerSamples.get("kv_storage_fsync_duration_seconds_count")).toBeGreaterThan(0);
  });

  test("a dead peer shows up as RPC errors, and a new leader as a leader change", async () => {
    const leader = await cluster.waitForLeader();
    const survivors = cluster.nodes.filter((node) => node.id !== leader).map((node) => node.id);
    const before = (await scrape(survivors[0]!)).get("kv_raft_leader_changes_total")!;
    await cluster.kill(leader);
    const newLeader = await cluster.waitForLeader(survivors);
    const other = survivors.find((id) => id !== newLeader)!;
    // The new leader keeps calling the dead node: its calls fail (connection refused through the proxy).
    const deadline = performance.now() + 10_000;
    let errors = 0;
    while (errors === 0) {
      const samples = await scrape(newLeader);
      errors = [...samples].filter(([series]) => series.startsWith(`kv_peer_rpc_errors_total{peer="${leader}"`)).reduce((sum, [, n]) => sum + n, 0);
      if (performance.now() > deadline) throw new Error("no RPC errors reported for the dead peer");
      if (errors === 0) await Bun.sleep(20); // polling interval between scrapes
    }
    expect((await scrape(other)).get("kv_raft_leader_changes_total")).toBeGreaterThan(before);
    expect((await scrape(newLeader)).get('kv_raft_role{role="leader"}')).toBe(1);
    await cluster.startNode(leader);
  });

  test("kv_storage_disk_bytes gives what the data dir takes by part, as the files are; process_* the process's start and CPU (found in a black-box review: no metric said how close the disk was)", async () => {
    const leader = await cluster.waitForLeader();
    for (let i = 0; i < 20; i++) expect((await fetch(`${cluster.node(leader).httpUrl}/kv/disk-${i}`, { method: "PUT", body: "x".repeat(1000) })).status).toBe(200);
    const dir = join(baseDir, `node-${leader}`);
    const onDisk = () => ({
      database: statSync(join(dir, "kv.db")).size,
      log: readdirSync(join(dir, "kv.db-log"))
        .filter((name) => name.endsWith(".log"))
        .reduce((sum, name) => sum + statSync(join(dir, "kv.db-log", name)).size, 0),
    });
    // The files only grow here (no compaction at 20 writes): what the scrape saw lies between a look before and one after.
    const before = onDisk();
    const samples = await scrape(leader);
    const after = onDisk();
    for (const part of ["database", "log"] as const) {
      const seen = samples.get(`kv_storage_disk_bytes{part="${part}"}`)!;
      expect([part, seen >= before[part] && seen <= after[part]]).toEqual([part, true]);
    }
    expect(before.log).toBeGreaterThan(20_000);
    expect(samples.get('kv_storage_disk_bytes{part="staging"}')).toBe(0);
    expect(samples.get('kv_storage_disk_bytes{part="wal"}')).toBeGreaterThanOrEqual(0);
    const started = samples.get("process_start_time_seconds")!;
    expect(Math.abs(started - (Date.now() / 1000 - process.uptime()))).toBeLessThan(5);
    expect(samples.get("process_cpu_seconds_total")!).toBeGreaterThan(0);
  });
});

describe("kv_raft_leader_changes_total", () => {
  test("counts each leader elected, the same node elected again in a new term too", () => {
    const registry = createMetricsRegistry();
    const metrics = instrumentNode(new MemoryKvNode(), registry, { clusterId: "c", version: "0" });
    const changes = () => parseExposition(registry.render()).get("kv_raft_leader_changes_total");
    metrics.noteLeader(2, 1);
    metrics.noteLeader(2, 1); // the same leader in the same term (a role event for another reason)
    expect(changes()).toBe(1);
    // Node 2 lost the leadership (no leader known while the election runs) and won it again.
    metrics.noteLeader(0, 2);
    metrics.noteLeader(2, 2);
    expect(changes()).toBe(2);
    metrics.noteLeader(3, 3);
    expect(changes()).toBe(3);
  });
});

describe("a member down shows on the leader (found in a black-box review: no metric or field did)", () => {
  test("kv_raft_follower_lag_entries: on a leader, each other member's entries not known to be in its log; none on a follower", () => {
    const node = new MemoryKvNode();
    const registry = createMetricsRegistry();
    instrumentNode(node, registry, { clusterId: "c", version: "0" });
    const base = node.statusNow;
    node.statusNow = {
      ...base,
      role: "leader",
      leaderId: 1,
      lastLogIndex: 500,
      members: [
        { id: 1, peerUrl: "http://n1", httpUrl: undefined, role: "voter" },
        { id: 2, peerUrl: "http://n2", httpUrl: undefined, role: "voter", matchIndex: 500 },
        { id: 3, peerUrl: "http://n3", httpUrl: undefined, role: "voter", matchIndex: 120 },
      ],
    };
    let samples = parseExposition(registry.render());
    expect([samples.get('kv_raft_follower_lag_entries{peer="2"}'), samples.get('kv_raft_follower_lag_entries{peer="3"}'), samples.get('kv_raft_follower_lag_entries{peer="1"}')]).toEqual([0, 380, undefined]);
    node.statusNow = { ...node.statusNow, role: "follower", leaderId: 2 };
    samples = parseExposition(registry.render());
    expect([...samples.keys()].filter((name) => name.startsWith("kv_raft_follower_lag_entries"))).toEqual([]);
  });

  test("kv_peer_reachable, on the leader only: 1 for a peer that answers, 0 for one unreachable or refusing, none for one not called yet", () => {
    const registry = createMetricsRegistry();
    const peer = (peerId: number, reachability: "unknown" | "reachable" | "unreachable" | "refusing") => ({
      peerId,
      reachability,
      queuedMessages: 0,
      queuedBytes: 0,
      inflightCalls: 0,
      deliveredCalls: 0,
      deliveredMessages: 0,
      failedCalls: 0,
      failedMessages: 0,
      failedCallsByCode: {},
      droppedMessages: 0,
      sentBytes: 0,
    });
    let leading = true;
    registerTransportMetrics(
      registry,
      {
        stats: () => [peer(2, "reachable"), peer(3, "unreachable"), peer(4, "refusing"), peer(5, "unknown")],
        serverStats: () => ({ receivedBytes: 0, requestsByStatus: new Map(), refused: {}, callsFromNonMembers: 0 }) as never,
      },
      () => leading,
    );
    const samples = parseExposition(registry.render());
    expect([2, 3, 4, 5].map((id) => samples.get(`kv_peer_reachable{peer="${id}"}`))).toEqual([1, 0, 0, undefined]);
    // A node that no longer leads calls the others no more: what it last saw is not current (found in review).
    leading = false;
    expect([...parseExposition(registry.render()).keys()].filter((name) => name.startsWith("kv_peer_reachable"))).toEqual([]);
  });

  test("a leader's /status gives each other member's matchIndex; a member cut off stays behind while the others keep up", async () => {
    const cluster = createMemoryCluster();
    try {
      await cluster.until(() => cluster.leader() !== undefined);
      const leader = cluster.leader()!;
      const id = leader.status().id;
      const [cut, kept] = [1, 2, 3].filter((other) => other !== id) as [number, number];
      cluster.network.cutBetween(id, cut);
      const { version } = await cluster.drive(leader.put("k", new TextEncoder().encode("v")));
      await cluster.until(() => leader.status().members.find((m) => m.id === kept)?.matchIndex === leader.status().lastLogIndex);
      const members = new Map(leader.status().members.map((m) => [m.id, m.matchIndex]));
      expect(members.get(id)).toBeUndefined();
      expect(members.get(cut)!).toBeLessThan(version);
      expect(members.get(kept)!).toBeGreaterThanOrEqual(version);
      expect(cluster.node(cut).status().members.every((m) => m.matchIndex === undefined)).toBe(true);
    } finally {
      for (const nodeId of [...cluster.nodes.keys()]) cluster.stop(nodeId);
    }
  });
});

describe("instrumentNode", () => {
  test("forwards every method of the node API the node has (a method added to the API and to the node, and not here, was missing behind the metrics in the server: GET /members?consistency=linearizable answered not_found)", async () => {
    const source = await Bun.file(new URL("../src/node/api.ts", import.meta.url)).text();
    const body = source.slice(source.indexOf("export interface KvNodeApi {"));
    const api = body.slice(0, body.indexOf("\n}\n"));
    const methods = [...api.matchAll(/^  (?:readonly )?([a-zA-Z]+)\??\(/gm)].map((match) => match[1] as string);
    expect(methods).toContain("currentMembers");
    expect(methods.length).toBeGreaterThan(20);
    const node = Object.fromEntries(methods.map((name) => [name, () => ({ members: [], leaderId: 0, configIndex: 0 })])) as unknown as KvNodeApi;
    (node as unknown as { status: () => unknown }).status = () => new MemoryKvNode().status();
    const wrapped = instrumentNode(node, createMetricsRegistry(), { clusterId: "c", version: "0" }).node as unknown as Record<string, unknown>;
    expect(methods.filter((name) => typeof wrapped[name] !== "function")).toEqual([]);
  });
});

describe("watch streams' ends", () => {
  test("kv_watch_slow_closed_total counts slow_watcher ends and kv_watch_compacted_closed_total compacted ones", async () => {
    const registry = createMetricsRegistry();
    const ends = ["slow_watcher", "compacted", "compacted", "unavailable"] as const;
    let opened = 0;
    const node = Object.assign(new MemoryKvNode(), {
      watch: async () => {
        const error = ends[opened++] as (typeof ends)[number];
        let sent = false;
        return {
          next: async () => (sent ? undefined : ((sent = true), [{ type: "error" as const, error, message: error }])),
          close: () => undefined,
        };
      },
    });
    const instrumented = instrumentNode(node, registry, { clusterId: "c", version: "0" }).node;
    for (let i = 0; i < ends.length; i++) {
      const stream = await instrumented.watch!({ prefix: "" }, "now");
      while ((await stream.next()) !== undefined);
    }
    const metrics = parseExposition(registry.render());
    expect([metrics.get("kv_watch_slow_closed_total"), metrics.get("kv_watch_compacted_closed_total")]).toEqual([1, 2]);
  });
});

describe("kv_http_request_duration_seconds", () => {
  test("labels every documented route by its template, and the method (found in a black-box review: /members and /leases were 'other', a listing counted as /kv/{key})", () => {
    const cases: [string, string][] = [
      ["/kv/a%2Fb", "/kv/{key}"],
      ["/kv", "/kv"],
      ["/kv/", "/kv/{key}"],
      ["/members", "/members"],
      ["/members/", "/members"],
      ["/members/4", "/members/{id}"],
      ["/members/4/promote", "/members/{id}/promote"],
      ["/leases", "/leases"],
      ["/leases/17", "/leases/{id}"],
      ["/leases/17/keepalive", "/leases/{id}/keepalive"],
      ["/openapi.json", "/openapi.json"],
      ["/status", "/status"],
      ["/members/4/other", "other"],
      ["/nope", "other"],
    ];
    for (const [path, label] of cases) expect([path, routeLabel(path)]).toEqual([path, label]);
  });

  test("counts a request whose client hung up mid-body as 499, not as the client's 400", async () => {
    const registry = createMetricsRegistry();
    const handler = createHttpHandler(new MemoryKvNode(), { metrics: registry });
    // A body that fails partway, as Bun's does when the client's connection drops; Bun then
    // aborts request.signal, as the controller does here.
    const hangUp = new AbortController();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new Uint8Array(10));
      },
      pull(controller) {
        hangUp.abort();
        controller.error(new Error("the connection closed"));
      },
    });
    const request = new Request("http://localhost/kv/a", { method: "PUT", body, signal: hangUp.signal, duplex: "half" } as RequestInit);
    const answered = await handler.handle(request);
    expect(answered.status).toBe(400);
    // A body the client sent whole and wrong is still the client's 400.
    expect((await handler.handle(new Request("http://localhost/kv/a?ifVersion=x", { method: "PUT", body: "v" }))).status).toBe(400);
    const samples = parseExposition(registry.render());
    expect(samples.get('kv_http_request_duration_seconds_count{route="/kv/{key}",method="PUT",status="499"}')).toBe(1);
    expect(samples.get('kv_http_request_duration_seconds_count{route="/kv/{key}",method="PUT",status="400"}')).toBe(1);
  });
});
