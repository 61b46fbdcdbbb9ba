// Proves how the node's proposed writes settle when leadership is lost: those whose entries committed (handed to apply, their results on the way from a storage thread) wait for their results; the rest fail at once with an unknown outcome.
import { expect, test } from "bun:test";
import type { ApplyResult } from "../src/kv/apply-plan.ts";
import { KvError } from "../src/lib/kv-error.ts";
import type { RawNode } from "../src/raft/raw-node.ts";
import { Proposals } from "../src/node/proposals.ts";

/** The two RawNode methods proposing uses: entries land from `firstIndex` on, in `term`. */
function coreAt(firstIndex: number, term: number): RawNode {
  return { propose: () => firstIndex, basicStatus: () => ({ term }) } as unknown as RawNode;
}

function putResult(index: number): ApplyResult {
  return { kind: "put", index, ok: true } as unknown as ApplyResult;
}

test("leadership lost: writes at or below the committed index wait for their results, later ones fail with timeout", async () => {
  const proposals = new Proposals();
  const writes = [5, 6, 7].map(() => proposals.enqueue(new Uint8Array(10), Number.MAX_SAFE_INTEGER));
  const outcomes: string[] = ["waiting", "waiting", "waiting"];
  writes.forEach((write, i) =>
    write.then(
      () => (outcomes[i] = "ok"),
      (error: unknown) => (outcomes[i] = error instanceof KvError ? error.code : "other"),
    ),
  );
  proposals.proposeQueued(coreAt(5, 2), () => new KvError("no_leader", "refused"));
  proposals.leadershipLost(6);
  await Promise.allSettled([writes[2]]);
  expect(outcomes).toEqual(["waiting", "waiting", "timeout"]);
  // Their results arrive after the step-down, from the storage's thread.
  proposals.settle(putResult(5), 2);
  proposals.settle(putResult(6), 2);
  await Promise.allSettled(writes);
  expect(outcomes).toEqual(["ok", "ok", "timeout"]);
  expect(proposals.count()).toBe(0);
});
