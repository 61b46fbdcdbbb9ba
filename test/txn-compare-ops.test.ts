// Proves a transaction's comparisons by operator (`"op": "=" | "!=" | "<" | ">"` on a version or a value, etcd's Compare results): they encode in a form a 0.8.0 decoder refuses while `=` keeps the bytes every release wrote, the memory and sqlite storages decide them alike (values byte by byte, an absent key failing every value comparison), POST /txn takes and checks them, and a leader proposes one only once every member said it applies it (409 upgrade_required otherwise, nothing proposed).
import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { createHttpApp } from "../src/http/app.ts";
import { COMMAND_LEVEL, CommandCodecError, decodeCommand, encodeCommand } from "../src/kv/command.ts";
import { decodeTxnBody, encodeTxnBody, type TxnCompare, txnCompareTargetsOf080, type TxnRequest } from "../src/kv/txn.ts";
import { KvError } from "../src/lib/kv-error.ts";
import { type Entry, EntryType } from "../src/raft/types.ts";
import { createMemoryKvStorage } from "../src/storage/memory-storage.ts";
import { openSqliteStorage } from "../src/storage/sqlite-storage.ts";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";
import { createMemoryCluster, type MemoryCluster } from "./helpers/memory-cluster.ts";

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const tempDirs: string[] = [];
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});
function tempDir(): string {
  const dir = mkdtempSync(joinPath(tmpdir(), "kv-txn-ops-"));
  tempDirs.push(dir);
  return dir;
}
const join = (parts: Uint8Array[]): Uint8Array => Uint8Array.from(parts.flatMap((part) => Array.from(part)));
const only = (compare: TxnCompare): TxnRequest => ({ compare: [compare], success: [], failure: [] });

describe("the encoding", () => {
  test("comparisons by operator round-trip; `=` is written as every release wrote a comparison, byte for byte", () => {
    const request: TxnRequest = {
      compare: [
        { key: "a", target: "version", version: 7, op: "<" },
        { key: "b", target: "version", version: 0, op: "!=" },
        { key: "c", target: "value", value: bytes("m"), op: ">" },
        { key: "d", target: "value", value: bytes("x"), op: "!=" },
        { key: "e", target: "version", version: 3 },
      ],
      success: [{ op: "get", key: "a" }],
      failure: [],
    };
    expect(decodeCommand(encodeCommand({ op: "txn", ...request }))).toEqual({ op: "txn", ...request });
    const plain = only({ key: "k", target: "version", version: 5 });
    expect(join(encodeTxnBody(only({ key: "k", target: "version", version: 5, op: "=" })))).toEqual(join(encodeTxnBody(plain)));
    expect(join(encodeTxnBody(only({ key: "k", target: "value", value: bytes("v"), op: "=" })))).toEqual(join(encodeTxnBody(only({ key: "k", target: "value", value: bytes("v") }))));
  });

  test("a decoder that knows 0.8.0's comparisons refuses one by operator (its release stops applying, never misreads it); an unknown operator tag does not decode", () => {
    const body = join(encodeTxnBody(only({ key: "k", target: "version", version: 5, op: ">" })));
    expect(() => decodeTxnBody(body, 0, undefined, txnCompareTargetsOf080)).toThrow(CommandCodecError);
    expect(decodeTxnBody(body, 0)).toEqual(only({ key: "k", target: "version", version: 5, op: ">" }));
    // [1 compare] [tag 5] [key length 1] ["k"] [operator 4: none such] [version 5] [0 success] [0 failure]
    expect(() => decodeTxnBody(Uint8Array.of(1, 5, 1, 0x6b, 4, 5, 0, 0), 0)).toThrow("unknown comparison operator");
  });
});

describe.each([
  ["memory", () => createMemoryKvStorage({ voters: [1] })],
  ["sqlite", () => openSqliteStorage(tempDir(), { voters: [1] })],
] as const)("%s storage: apply decides them on the state before the transaction", (_name, open) => {
  test("versions (0 for an absent key) and values (byte by byte; absent fails every value comparison)", async () => {
    const storage = open();
    let index = 0;
    const apply = async (data: Uint8Array) => {
      const entry: Entry = { index: ++index, term: 1, type: EntryType.Normal, data };
      storage.save({ term: 1, vote: 1, commit: index }, [entry], true);
      return (await storage.applyEntries([entry]))[0];
    };
    await apply(encodeCommand({ op: "put", key: "k", value: bytes("abc") })); // version 1
    const holds = async (compare: TxnCompare) => {
      const result = await apply(encodeCommand({ op: "txn", ...only(compare) }));
      expect(result?.kind).toBe("txn");
      return (result as { succeeded: boolean }).succeeded;
    };
    const cases: [TxnCompare, boolean][] = [
      [{ key: "k", target: "version", version: 1, op: "=" }, true],
      [{ key: "k", target: "version", version: 1, op: "!=" }, false],
      [{ key: "k", target: "version", version: 2, op: "<" }, true],
      [{ key: "k", target: "version", version: 1, op: "<" }, false],
      [{ key: "k", target: "version", version: 0, op: ">" }, true],
      [{ key: "gone", target: "version", version: 1, op: "<" }, true],
      [{ key: "gone", target: "version", version: 0, op: "!=" }, false],
      [{ key: "k", target: "value", value: bytes("abd"), op: "<" }, true],
      [{ key: "k", target: "value", value: bytes("ab"), op: ">" }, true],
      [{ key: "k", target: "value", value: bytes("abcd"), op: "<" }, true],
      [{ key: "k", target: "value", value: bytes("abc"), op: "!=" }, false],
      [{ key: "k", target: "value", value: bytes("abc"), op: ">" }, false],
      [{ key: "gone", target: "value", value: bytes("x"), op: "!=" }, false],
      [{ key: "gone", target: "value", value: bytes(""), op: ">" }, false],
    ];
    const got: [string, boolean][] = [];
    for (const [compare, _] of cases) got.push([JSON.stringify(compare, (_key, value) => (value instanceof Uint8Array ? new TextDecoder().decode(value) : value)), await holds(compare)]);
    expect(got).toEqual(cases.map(([compare, expected]) => [JSON.stringify(compare, (_key, value) => (value instanceof Uint8Array ? new TextDecoder().decode(value) : value)), expected]));
    storage.close();
  });
});

describe("on a cluster", () => {
  let cluster: MemoryCluster | undefined;
  afterEach(() => {
    for (const id of [...(cluster?.nodes.keys() ?? [])]) cluster?.stop(id);
    cluster = undefined;
  });

  test("POST /txn takes an op on a version or a value, refuses a bad one or one on exists with a 400, and a member of an older release gets it 409 upgrade_required, nothing proposed (unless it only reads)", async () => {
    let old = 0;
    const c = createMemoryCluster({ commandLevelOf: (id) => (id === old ? 1 : COMMAND_LEVEL) });
    cluster = c;
    await c.until(() => c.leader() !== undefined);
    const leader = c.leader()!;
    const app = createHttpApp(leader);
    const txn = async (body: unknown) => {
      const response = await c.drive(app.handle(new Request("http://localhost/txn", { method: "POST", body: JSON.stringify(body) })));
      return { status: response.status, body: (await response.json()) as Record<string, unknown> };
    };
    const { version } = await c.drive(leader.put("n", bytes("5")));
    expect(await txn({ compare: [{ key: "n", version: version + 1, op: "<" }, { key: "n", value: "4", op: ">" }], success: [{ put: { key: "n", value: "6" } }] })).toMatchObject({
      status: 200,
      body: { succeeded: true },
    });
    expect(await txn({ compare: [{ key: "n", value: "6", op: "!=" }], success: [{ put: { key: "n", value: "7" } }], failure: [{ get: { key: "n" } }] })).toMatchObject({
      status: 200,
      body: { succeeded: false, results: [{ get: { key: "n", found: true, value: "6" } }] },
    });
    for (const [compare, words] of [
      [{ key: "n", version: 1, op: "<=" }, 'op must be one of "=", "!=", "<" and ">"'],
      [{ key: "n", exists: true, op: "!=" }, "not 'exists'"],
    ] as const) {
      const answer = await txn({ compare: [compare] });
      expect(answer.status).toBe(400);
      expect(String(answer.body.message)).toContain(words);
    }
    // A member restarts on an older release.
    old = [1, 2, 3].find((id) => id !== leader.status().id) as number;
    const storage = c.storages.get(old)!;
    c.stop(old);
    c.startNode(old, c.peers, storage);
    const before = leader.status().lastLogIndex;
    const refused = await txn({ compare: [{ key: "n", version: 1, op: ">" }], success: [{ put: { key: "n", value: "8" } }] });
    expect(refused).toMatchObject({ status: 409, body: { error: "upgrade_required", members: [old] } });
    expect(leader.status().lastLogIndex).toBe(before);
    // A transaction of gets alone is a read: nothing is proposed, so any operator goes.
    const read = await txn({ compare: [{ key: "n", version: 1, op: ">" }], success: [{ get: { key: "n" } }] });
    expect(read).toMatchObject({ status: 200, body: { succeeded: true, results: [{ get: { key: "n", found: true, value: "6" } }] } });
    expect(leader.status().lastLogIndex).toBe(before);
    // Comparisons for equality are written as that release reads them: they go.
    expect(await txn({ compare: [{ key: "n", value: "6", op: "=" }], success: [{ put: { key: "n", value: "9" } }] })).toMatchObject({ status: 200, body: { succeeded: true } });
    let direct: unknown;
    try {
      leader.txn({ compare: [{ key: "n", target: "value", value: bytes("9"), op: "<" }], success: [{ op: "delete", key: "n" }], failure: [] });
    } catch (error) {
      direct = error;
    }
    expect(direct instanceof KvError && direct.code).toBe("upgrade_required");
  });
});
