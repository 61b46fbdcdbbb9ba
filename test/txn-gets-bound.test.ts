// Proves a write transaction's gets are bounded where it applies, not only where it arrives: a put
// proposed just before it may grow a value it reads, and every replica then copied whatever its gets
// found (100 gets of a value grown to 1 MiB answered 100 MiB: found in a code review of transactions).
// Once every member applies the bounded form (COMMAND_LEVEL 3), the leader proposes it; with a member
// of an older release it proposes the form every release applies, as before.
import { afterEach, describe, expect, test } from "bun:test";
import { commandLevelKey, commandLevelOf } from "../src/kv/apply-plan.ts";
import { COMMAND_LEVEL, CommandCodecError, decodeCommand, encodeCommand } from "../src/kv/command.ts";
import { txnSessionGetBytesMax } from "../src/kv/txn.ts";
import { KvError } from "../src/lib/kv-error.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { createMemoryCluster, type MemoryCluster, tickMs } from "./helpers/memory-cluster.ts";

const mib = 1024 * 1024;

describe("the encoding", () => {
  const txn = { compare: [], success: [{ op: "get" as const, key: "k" }], failure: [] };

  test("a transaction with bounded gets is op 0x0c with the body of 0x10, and decodes as bounded", () => {
    const plain = encodeCommand({ op: "txn", ...txn });
    const bounded = encodeCommand({ op: "txn", ...txn, getsBounded: true });
    expect(plain[0]).toBe(0x10);
    expect(bounded[0]).toBe(0x0c);
    expect(bounded.subarray(1)).toEqual(plain.subarray(1));
    expect(decodeCommand(bounded)).toEqual({ op: "txn", ...txn, getsBounded: true });
    expect(decodeCommand(plain)).toEqual({ op: "txn", ...txn });
  });

  test("it is never idempotent: an idempotent transaction is bounded by its session", () => {
    const stamp = { atMs: 1, windowMs: 1000, sessionsMax: 10 };
    expect(() => encodeCommand({ op: "txn", ...txn, getsBounded: true, idempotencyKey: "i", stamp })).toThrow(CommandCodecError);
    const wrapped = encodeCommand({ op: "txn", ...txn, idempotencyKey: "i", stamp });
    const inner = wrapped.indexOf(0x10, 1);
    wrapped[inner] = 0x0c;
    expect(() => decodeCommand(wrapped)).toThrow("a transaction with bounded gets in an idempotent encoding");
  });
});

describe("where it applies", () => {
  let cluster: MemoryCluster | undefined;
  afterEach(() => {
    for (const id of [...(cluster?.nodes.keys() ?? [])]) cluster?.stop(id);
    cluster = undefined;
  });

  /** A put of `k` that grows it to 1 MiB, and a transaction with `gets` gets of `k` proposed before it applies. */
  async function raced(c: MemoryCluster, gets: number) {
    await c.until(() => c.leader()?.clusterNonce() !== undefined);
    const leader = c.leader()!;
    await c.drive(leader.put("k", new Uint8Array(1)));
    // Both proposed before either applies: the transaction's check sees k at 1 byte.
    const grow = leader.put("k", new Uint8Array(mib).fill(0x61));
    const txn = leader.txn({ compare: [], success: [{ op: "put", key: "w", value: new Uint8Array(1) }, ...Array.from({ length: gets }, () => ({ op: "get" as const, key: "k" }))], failure: [] });
    await c.drive(grow);
    const outcome = await c.drive(txn).then(
      (answer) => ({ answer }),
      (error: unknown) => ({ error }),
    );
    await c.until(() => [1, 2, 3].every((id) => c.node(id).status().appliedIndex >= leader.status().appliedIndex));
    return { leader, outcome };
  }

  test("gets that grew past the bound before it applied: 413 too_large, nothing of it applied on any replica, the level recorded", async () => {
    const c = createMemoryCluster();
    cluster = c;
    const { outcome } = await raced(c, 100);
    expect("error" in outcome && outcome.error instanceof KvError && outcome.error.code).toBe("too_large");
    expect(String((outcome as { error: unknown }).error)).toContain(`more than the ${txnSessionGetBytesMax} one answer may carry: nothing was applied`);
    for (const id of [1, 2, 3]) {
      expect([id, c.storages.get(id)!.get("w")]).toEqual([id, undefined]);
      expect([id, commandLevelOf(c.storages.get(id)!.get(commandLevelKey))]).toEqual([id, 3]);
    }
  });

  test("within the bound it applies, answering its gets", async () => {
    const c = createMemoryCluster();
    cluster = c;
    const { outcome } = await raced(c, 3);
    expect("answer" in outcome).toBe(true);
    const { answer } = outcome as { answer: { succeeded: boolean; results: readonly { op: string; found?: boolean; value?: Uint8Array }[] } };
    expect(answer.succeeded).toBe(true);
    expect(answer.results.filter((result) => result.op === "get").map((result) => result.value?.byteLength)).toEqual([mib, mib, mib]);
    for (const id of [1, 2, 3]) expect([id, c.storages.get(id)!.get("w")?.value.byteLength]).toEqual([id, 1]);
  });

  test("one queued in the bounded form when a membership change is proposed before it goes out in the form every release applies, not refused conf_change_pending (found in a code review: the leader's promotion of a learner on its tick refused it)", async () => {
    const c = createMemoryCluster({ node: { requestTimeoutMs: 5_000 } });
    cluster = c;
    await c.until(() => c.leader()?.clusterNonce() !== undefined);
    const leader = c.leader()!;
    await c.drive(leader.put("k", new Uint8Array(1)));
    const view = await c.drive(leader.addMember!(4, "mem://peer-4"));
    const storage = createMemoryKvStorage();
    storage.bootstrapJoined(
      { voters: view.members.filter((m) => m.role === "voter").map((m) => m.id), learners: [4], addresses: view.members.map((m) => ({ id: m.id, peerUrl: m.peerUrl })) },
      view.configIndex,
    );
    c.startNode(4, new Map([[4, "mem://peer-4"]]), storage);
    // One queued before every tick, until the leader promotes the learner on one of them.
    const outcomes: Promise<string>[] = [];
    for (let i = 0; i < 2_000 && leader.members().members.find((m) => m.id === 4)?.role !== "voter"; i++) {
      outcomes.push(
        leader.txn({ compare: [], success: [{ op: "put", key: `w${i}`, value: new Uint8Array(1) }, { op: "get", key: "k" }], failure: [] }).then(
          () => "ok",
          (error: unknown) => (error instanceof KvError ? `${error.code}: ${error.message}` : String(error)),
        ),
      );
      c.clock.advance(tickMs);
      await c.settle();
    }
    expect(leader.members().members.find((m) => m.id === 4)?.role).toBe("voter");
    await c.until(() => leader.status().appliedIndex === leader.status().lastLogIndex);
    expect((await c.drive(Promise.all(outcomes))).filter((outcome) => outcome !== "ok")).toEqual([]);
  }, 60_000);

  test("with a member of an older release (level 2) the leader proposes the form it applies, unbounded as before, and nothing is refused", async () => {
    const c = createMemoryCluster({ commandLevelOf: (id) => (id === 3 ? 2 : COMMAND_LEVEL) });
    cluster = c;
    const { leader, outcome } = await raced(c, 5);
    expect("answer" in outcome).toBe(true);
    for (const id of [1, 2, 3]) expect([id, c.storages.get(id)!.get("w")?.value.byteLength]).toEqual([id, 1]);
    const last = leader.status().appliedIndex;
    const storage = c.storages.get(leader.status().id)!;
    const kinds = storage.entries(last - 2, last + 1, Number.MAX_SAFE_INTEGER).map((entry) => entry.data[0]);
    expect(kinds).toContain(0x10);
    expect(kinds).not.toContain(0x0c);
    expect(commandLevelOf(storage.get(commandLevelKey))).toBe(1);
  });
});
