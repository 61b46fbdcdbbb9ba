// Proves a live cluster's peer ports refuse malformed and forged peer messages without a crash: garbage bytes and codec-invalid protobuf get invalid_argument, calls without the cluster token are refused untouched, and decodable forgeries (stale and jumbled terms, out-of-range indexes, unknown senders) leave every node running with its acknowledged data. The clusters run in-process (createServer). Replay with KV_FUZZ_SEED=N.
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { EntrySchema, RaftMessageSchema, SendRequestSchema } from "../src/gen/kv/v1/raft_pb.ts";
import type { RaftMessage } from "../src/gen/kv/v1/raft_pb.ts";
import { createPrng, type Prng } from "../src/lib/prng.ts";
import type { Message, NodeId } from "../src/raft/types.ts";
import { toSendRequest } from "../src/transport/codec.ts";
import { createServerCluster, type ServerCluster } from "./helpers/server-cluster.ts";

const SEED = Number(process.env.KV_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
const TOKEN = "peer-fuzz-token-0123456789abcdef";
const SAFE_MAX = Number.MAX_SAFE_INTEGER;

const baseDir = mkdtempSync(join(tmpdir(), "kv-fuzz-peer-"));
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Three in-process servers, started, stopped after the test; with `clusterToken` when given. */
async function startCluster(name: string, clusterToken?: string): Promise<ServerCluster> {
  const cluster = createServerCluster({
    size: 3,
    baseDir: mkdtempSync(join(baseDir, `${name}-`)),
    ...(clusterToken === undefined ? {} : { config: () => ({ clusterToken }) }),
  });
  cleanups.push(() => cluster.stop());
  await cluster.start();
  return cluster;
}
afterAll(() => rmSync(baseDir, { recursive: true, force: true }));

function randomBytes(prng: Prng, length: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = prng.intInclusive(0, 255);
  return bytes;
}

/** Posts a raw body to a node's peer service; answers the HTTP status and the Connect code. */
async function post(cluster: ServerCluster, to: number, body: Uint8Array<ArrayBuffer>, headers: Record<string, string>): Promise<{ status: number; code: string }> {
  const response = await fetch(`http://127.0.0.1:${cluster.node(to).peerPort}/kv.v1.RaftService/Send`, {
    method: "POST",
    headers: { "content-type": "application/proto", "connect-protocol-version": "1", ...headers },
    body,
  });
  const text = await response.text();
  if (response.status === 200) return { status: 200, code: "ok" };
  try {
    return { status: response.status, code: (JSON.parse(text) as { code: string }).code };
  } catch {
    return { status: response.status, code: text.slice(0, 80) };
  }
}

/** Messages a correct codec refuses: each breaks one rule fromProto checks. */
function invalidMessages(from: NodeId, to: NodeId, term: bigint): RaftMessage[] {
  const entry = (index: bigint, entryTerm: bigint, type = 1) => create(EntrySchema, { index, term: entryTerm, type, data: new Uint8Array([1]) });
  const append = (entries: ReturnType<typeof entry>[], prevLogIndex = 0n, prevLogTerm = 0n) =>
    create(RaftMessageSchema, { from, to, term, body: { case: "append", value: { prevLogIndex, prevLogTerm, entries, commit: 0n } } });
  return [
    create(RaftMessageSchema, { from: 0, to, term, body: { case: "timeoutNow", value: {} } }), // node id 0
    create(RaftMessageSchema, { from: to, to, term, body: { case: "timeoutNow", value: {} } }), // to itself
    create(RaftMessageSchema, { from, to, term }), // no body
    create(RaftMessageSchema, { from, to, term: 2n ** 53n, body: { case: "timeoutNow", value: {} } }), // term past 2^53
    create(RaftMessageSchema, { from, to, term: 2n ** 64n - 1n, body: { case: "timeoutNow", value: {} } }),
    create(RaftMessageSchema, { from, to, term, body: { case: "vote", value: { lastLogIndex: 1n, lastLogTerm: term + 1n, preVote: false, transfer: false } } }),
    append([entry(2n, term)]), // not contiguous after prevLogIndex 0
    append([entry(1n, term), entry(2n, term - 1n > 0n ? term - 1n : 0n)]), // terms going down (or 0)
    append([entry(1n, term + 1n)]), // an entry from beyond the sender's term
    append([entry(1n, term, 0)]), // no entry type
    append([entry(1n, term, 7)]), // unknown entry type
    append([], 0n, term + 1n), // prevLogTerm beyond term
    create(RaftMessageSchema, { from, to, term, body: { case: "heartbeat", value: { commit: 0n, readContext: "x".repeat(5_000) } } }),
    create(RaftMessageSchema, { from, to, term, body: { case: "appendResponse", value: { success: false, index: 0n, hintIndex: 0n, hintTerm: term + 1n } } }),
  ];
}

/** A decodable but forged message: stale, jumbled or far-future terms, out-of-range indexes, unknown senders. */
function forgedMessage(prng: Prng, leader: NodeId, follower: NodeId, term: number): Message {
  const huge = () => prng.pick([0, 1, 1_000, 2 ** 31, 2 ** 32 + 1, 1e12, SAFE_MAX]);
  const staleTerm = () => prng.intInclusive(0, Math.max(0, term - 1));
  switch (prng.intInclusive(0, 7)) {
    case 0: // anything at a stale term: must be ignored
      return prng.pick<Message>([
        { type: "append", from: leader, to: follower, term: staleTerm(), prevLogIndex: huge(), prevLogTerm: 0, entries: [], commit: huge() },
        { type: "heartbeat", from: follower, to: leader, term: staleTerm(), commit: huge(), readContext: "" },
        { type: "vote", from: follower, to: leader, term: staleTerm(), lastLogIndex: huge(), lastLogTerm: 0, transfer: prng.chance(0.5) },
        { type: "timeout-now", from: leader, to: follower, term: staleTerm() },
      ]);
    case 1: // responses to the leader with indexes out of range
      return { type: "append-response", from: follower, to: leader, term, success: prng.chance(0.5), index: huge(), hintIndex: huge(), hintTerm: prng.intInclusive(0, term) };
    case 2:
      return { type: "read-index-response", from: leader, to: follower, term, readContext: `${follower}.${prng.intInclusive(0, 5)}`, index: huge(), rejected: prng.chance(0.3) };
    case 3:
      return { type: "heartbeat-response", from: follower, to: leader, term, readContext: prng.pick(["", "~1", `~${huge()}`, `${leader}.1`, "junk"]) };
    case 4: // the real leader's id, out-of-range log positions, no entries
      return { type: "append", from: leader, to: follower, term, prevLogIndex: huge(), prevLogTerm: prng.intInclusive(0, term), entries: [], commit: 0 };
    case 5: // votes and pre-votes from the future, and from a node that is not a member
      return {
        type: prng.chance(0.5) ? "pre-vote" : "vote",
        from: prng.pick([follower, 99]), // 99 is no member: refused (failed_precondition), as the core could not answer it
        to: leader,
        term: term + prng.intInclusive(1, 1_000),
        lastLogIndex: prng.pick([0, 1, huge()]),
        lastLogTerm: 0,
        transfer: prng.chance(0.2),
      };
    case 6:
      return { type: prng.chance(0.5) ? "vote-response" : "pre-vote-response", from: follower, to: leader, term: term + prng.intInclusive(0, 3), granted: prng.chance(0.5) };
    default:
      return { type: "read-index", from: follower, to: leader, term, readContext: `${follower}.${huge()}` };
  }
}

/** Writes 20 keys through the leader, following a change of leader while the young cluster settles. */
async function writeKnownData(cluster: ServerCluster): Promise<Map<string, string>> {
  const data = new Map<string, string>();
  for (let i = 0; i < 20; i++) {
    for (let attempt = 1; ; attempt++) {
      const leader = await cluster.waitForLeader();
      const response = await fetch(`${cluster.node(leader).httpUrl}/kv/known-${i}`, { method: "PUT", body: `value-${i}`, redirect: "manual" });
      await response.arrayBuffer();
      if (response.status === 200) break;
      // 307 or 503 no_leader: leadership moved between the status probe and the write; a put is idempotent.
      expect(attempt).toBeLessThan(20);
    }
    data.set(`known-${i}`, `value-${i}`);
  }
  return data;
}

/** Every node alive, a leader elected, every acknowledged write readable on every node, and writes still accepted. */
async function expectHealthy(cluster: ServerCluster, data: Map<string, string>): Promise<void> {
  for (const { id } of cluster.nodes) {
    // Running: it did not stop on its own (an uncaught error would fail this process's run).
    expect(cluster.fatal(id)).toBeUndefined();
    expect(cluster.logs(id)).not.toContain('"event":"fatal"');
  }
  const leader = await cluster.waitForLeader();
  for (const { id } of cluster.nodes) {
    for (const [key, value] of data) expect(await (await fetch(`${cluster.node(id).httpUrl}/kv/${key}`)).text()).toBe(value);
  }
  expect((await fetch(`${cluster.node(leader).httpUrl}/kv/after-fuzz`, { method: "PUT", body: "ok" })).status).toBe(200);
}

describe("peer ports under malformed and forged messages", () => {
  test("garbage bytes and codec-invalid protobuf get invalid_argument; decodable forgeries crash nothing", async () => {
    const prng = createPrng(SEED);
    const cluster = await startCluster("open");
    try {
      const data = await writeKnownData(cluster);
      const leader = await cluster.waitForLeader();
      const follower = [1, 2, 3].find((id) => id !== leader)!;
      const term = cluster.status(leader)!.term;
      const headersFor = (id: number) => ({ "kv-cluster-id": cluster.node(id).clusterId });
      const codes = new Map<string, number>();
      const count = (code: string) => codes.set(code, (codes.get(code) ?? 0) + 1);

      // Random bytes, and truncations of a valid call: never anything but invalid_argument or, for a prefix that is itself valid, ok.
      const valid = toBinary(SendRequestSchema, toSendRequest(follower, "", [{ type: "heartbeat-response", from: follower, to: leader, term: 0, readContext: "" }]));
      for (let i = 0; i < 1_500; i++) {
        const to = prng.pick([1, 2, 3]);
        const body = prng.chance(0.7) ? randomBytes(prng, prng.intInclusive(0, 400)) : valid.slice(0, prng.intInclusive(1, valid.byteLength - 1));
        const { status, code } = await post(cluster, to, body, headersFor(to));
        count(code);
        expect({ status, code }).not.toMatchObject({ status: 500 });
        // ok: a prefix or random bytes that happen to decode as valid; failed_precondition: valid, but from a stranger.
        expect(["invalid_argument", "failed_precondition", "ok"]).toContain(code);
      }
      expect(codes.get("invalid_argument")).toBeGreaterThan(1_000);

      // Well-formed protobuf that breaks a rule of the Raft messages: refused whole.
      for (const to of [1, 2, 3]) {
        const from = to === 1 ? 2 : 1;
        for (const message of invalidMessages(from, to, BigInt(term))) {
          const body = toBinary(SendRequestSchema, create(SendRequestSchema, { from, fromHttpUrl: "", messages: [message] }));
          expect(await post(cluster, to, body, headersFor(to))).toEqual({ status: 400, code: "invalid_argument" });
        }
        // A call whose messages come from another sender than the call, or are for another node.
        const third = [1, 2, 3].find((id) => id !== from && id !== to)!;
        const mixed = create(SendRequestSchema, {
          from,
          fromHttpUrl: "",
          messages: [create(RaftMessageSchema, { from: third, to, term: BigInt(term), body: { case: "timeoutNow", value: {} } })],
        });
        expect((await post(cluster, to, toBinary(SendRequestSchema, mixed), headersFor(to))).code).toBe("invalid_argument");
        const elsewhere = toBinary(SendRequestSchema, toSendRequest(from, "", [{ type: "timeout-now", from, to: 7, term: 0 }]));
        expect((await post(cluster, to, elsewhere, headersFor(to))).code).toBe("invalid_argument");
        expect((await post(cluster, to, toBinary(SendRequestSchema, toSendRequest(from, "not a url", [])), headersFor(to))).code).toBe("invalid_argument");
      }

      // Decodable forgeries, in batches whose terms jump around.
      for (let batch = 0; batch < 300; batch++) {
        const messages = Array.from({ length: prng.intInclusive(1, 5) }, () => forgedMessage(prng, leader, follower, term));
        const groups = new Map<string, Message[]>();
        for (const message of messages) {
          const key = `${message.from}>${message.to}`;
          groups.set(key, [...(groups.get(key) ?? []), message]);
        }
        for (const group of groups.values()) {
          const to = group[0]!.to;
          const body = toBinary(SendRequestSchema, toSendRequest(group[0]!.from, "http://127.0.0.1:1", group));
          const { status } = await post(cluster, to, body, headersFor(to));
          expect(status).not.toBe(500);
        }
      }
      await expectHealthy(cluster, data);
    } catch (error) {
      for (const { id } of cluster.nodes) {
        const fatal = cluster.logs(id).split("\n").filter((line) => line.includes('"level":"error"'));
        if (fatal.length > 0) console.error(fatal.join("\n"));
      }
      console.error(`peer fuzz failed with seed=${SEED}; replay: KV_FUZZ_SEED=${SEED} bun test test/fuzz-peer.test.ts`);
      throw error;
    }
  }, 120_000);

  test("with a cluster token, a storm of forged calls without it is refused and changes no node's term", async () => {
    const prng = createPrng(SEED + 1);
    const cluster = await startCluster("token", TOKEN);
    const data = await writeKnownData(cluster);
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    const before = [1, 2, 3].map((id) => cluster.status(id));
    for (let i = 0; i < 500; i++) {
      const to = prng.pick([1, 2, 3]);
      const message: Message = { ...forgedMessage(prng, leader, follower, before[0]!.term + 100), to } as Message;
      const from = message.from === to ? (to === 1 ? 2 : 1) : message.from;
      const body = toBinary(SendRequestSchema, toSendRequest(from, "", [{ ...message, from } as Message]));
      const headers: Record<string, string> = prng.chance(0.5) ? { "kv-cluster-token": `${TOKEN.slice(0, -1)}${prng.pick(["x", "y"])}` } : {};
      expect((await post(cluster, to, body, { ...headers, "kv-cluster-id": cluster.node(to).clusterId })).code).toBe("unauthenticated");
    }
    const after = [1, 2, 3].map((id) => cluster.status(id));
    expect(after.map((status) => status?.term)).toEqual(before.map((status) => status?.term));
    await expectHealthy(cluster, data);
  }, 120_000);

  // Outside input is ignored, not asserted (validate what comes from outside, assert what is
  // yours): a forged claim of leadership in the leader's own term must not stop it.
  test("a forged heartbeat claiming leadership in the leader's own term does not stop the leader", async () => {
    const cluster = await startCluster("two-leaders");
    const leader = await cluster.waitForLeader();
    const follower = [1, 2, 3].find((id) => id !== leader)!;
    const term = cluster.status(leader)!.term;
    const body = toBinary(SendRequestSchema, toSendRequest(follower, "", [{ type: "heartbeat", from: follower, to: leader, term, commit: 0, readContext: "" }]));
    expect((await post(cluster, leader, body, { "kv-cluster-id": cluster.node(leader).clusterId })).status).toBe(200);
    // The leader either ignores the message (fixed) or stops (the bug): wait for one of the two.
    const outcome = await cluster.waitForLog(leader, '"event":"fatal"', 5_000).then(
      () => "stopped",
      () => "ignored",
    );
    expect(outcome).toBe("ignored");
    expect(cluster.fatal(leader)).toBeUndefined();
  }, 60_000);
});
