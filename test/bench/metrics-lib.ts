// Measures the metrics swap A B A B: the hand-written registry (A, src/lib/metrics.ts) against the
// same interface on prom-client (B, test/bench/candidates/metrics-prom-client.ts), first checking
// that both render the same bytes, then on what a node does per request: a labelled
// histogram observe (kv_http_request_duration_seconds), a labelled counter inc
// (kv_proposals_committed_total), and a scrape rendering a node-sized registry.
// Usage: bun test/bench/metrics-lib.ts [--rounds 2] [--scale 1]
import { createMetricsRegistry as createHandRegistry, LATENCY_BUCKETS_S } from "../../src/lib/metrics.ts";
import { createMetricsRegistry as createPromRegistry } from "./candidates/metrics-prom-client.ts";
import { runMicro } from "./ab-micro.ts";

type AnyRegistry = ReturnType<typeof createHandRegistry> | ReturnType<typeof createPromRegistry>;

const routes = ["/kv/{key}", "/kv", "/status", "/txn"];
const statuses = ["200", "404", "412"];
const ops = ["put", "delete", "txn"];

function observer(create: () => AnyRegistry) {
  const registry = create();
  const histogram = registry.histogram("kv_http_request_duration_seconds", "Requests.", LATENCY_BUCKETS_S, ["route", "status"]);
  return (operations: number) => {
    for (let i = 0; i < operations; i++) histogram.observe({ route: routes[i & 3] as string, status: statuses[i % 3] as string }, (i & 1023) * 0.00002);
    return histogram;
  };
}

function incrementer(create: () => AnyRegistry) {
  const registry = create();
  const counter = registry.counter("kv_proposals_committed_total", "Writes.", ["op"]);
  return (operations: number) => {
    for (let i = 0; i < operations; i++) counter.inc({ op: ops[i % 3] as string });
    return counter;
  };
}

/** A registry shaped like a node's: 8 histograms (4 routes × 3 statuses each), 10 counters, 10 collected gauges. */
function scraper(create: () => AnyRegistry) {
  const registry = create();
  for (let h = 0; h < 8; h++) {
    const histogram = registry.histogram(`kv_test_${h}_seconds`, "A histogram.", LATENCY_BUCKETS_S, ["route", "status"]);
    for (let i = 0; i < 1000; i++) histogram.observe({ route: routes[i & 3] as string, status: statuses[i % 3] as string }, i * 0.0001);
  }
  for (let c = 0; c < 10; c++) registry.counter(`kv_test_${c}_total`, "A counter.", ["op"]).inc({ op: "put" }, 7);
  for (let g = 0; g < 10; g++) registry.collected(`kv_test_${g}_gauge`, "A gauge.", "gauge", ["peer"], () => [[{ peer: "2" }, g], [{ peer: "3" }, g]]);
  return async (operations: number) => {
    let text = "";
    for (let i = 0; i < operations; i++) text = await registry.render();
    return text;
  };
}

// Same operations on both: the texts must be identical, or the comparison is of different work.
const texts = await Promise.all([createHandRegistry, createPromRegistry].map(async (create) => {
  const registry = create({ seriesMax: 5 });
  const requests = registry.counter("test_requests_total", "Requests.\nBy route.", ["route", "status"]);
  const latency = registry.histogram("test_latency_seconds", "A histogram.", [0.1, 1], ["route"]);
  registry.gauge("test_temperature", "A gauge.").set({}, -3.5);
  registry.collected("test_collected", "Read at scrape time.", "counter", ["peer"], () => [[{ peer: "2" }, 42]]);
  for (let i = 0; i < 8; i++) requests.inc({ status: String(200 + (i % 3)), route: i === 7 ? 'we"ird\\\n' : `/r${i % 2}` }, i);
  for (const value of [0.05, 0.5, 7, Number.NaN]) latency.observe({ route: "a" }, value);
  return registry.render();
}));
if (texts[0] !== texts[1]) throw new Error(`the two registries render differently:\n${texts[0]}\n---\n${texts[1]}`);
console.log("both registries render identical text");

await runMicro([
  {
    label: "histogram observe, 2 labels",
    operations: 2_000_000,
    a: { name: "hand-written", run: observer(createHandRegistry) },
    b: { name: "prom-client", run: observer(createPromRegistry) },
  },
  {
    label: "counter inc, 1 label",
    operations: 2_000_000,
    a: { name: "hand-written", run: incrementer(createHandRegistry) },
    b: { name: "prom-client", run: incrementer(createPromRegistry) },
  },
  {
    label: "scrape render (8 histograms × 12 series, 10 counters, 10 collected gauges)",
    operations: 1_000,
    a: { name: "hand-written", run: scraper(createHandRegistry) },
    b: { name: "prom-client", run: scraper(createPromRegistry) },
  },
]);
