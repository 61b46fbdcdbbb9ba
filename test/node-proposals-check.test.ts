// Proves the check a queued write makes when it is proposed (Proposals' `check`): a write it refuses is rejected with its error and nothing of it proposed, the others keep their order, and the one that becomes first is judged against the pending bytes' bound anew (found in review: it went as "the oldest, however large", past pendingBytesMax).
import { expect, test } from "bun:test";
import { KvError } from "../src/lib/kv-error.ts";
import { pendingBytesMax, proposalBytesPerTurnMax, Proposals } from "../src/node/proposals.ts";
import type { RawNode } from "../src/raft/raw-node.ts";

/** A core that takes every proposal, recording the sizes of the entries proposed. */
function recordingCore(): { raw: RawNode; proposed: number[] } {
  let next = 1;
  const proposed: number[] = [];
  const raw = {
    propose: (datas: Uint8Array[]) => {
      const first = next;
      next += datas.length;
      for (const data of datas) proposed.push(data.byteLength);
      return first;
    },
    basicStatus: () => ({ term: 1 }),
  } as unknown as RawNode;
  return { raw, proposed };
}

const overloaded = () => new KvError("overloaded", "refused");

test("a write its check refuses is rejected and not proposed; the rest go in order", async () => {
  const proposals = new Proposals();
  const { raw, proposed } = recordingCore();
  const settled: string[] = [];
  proposals.enqueue(new Uint8Array(1), 1e12).catch(() => settled.push("first refused"));
  const refused = proposals.enqueue(new Uint8Array(2), 1e12, () => new KvError("upgrade_required", "no")).catch((error: KvError) => error.code);
  proposals.enqueue(new Uint8Array(3), 1e12, () => undefined).catch(() => settled.push("third refused"));
  proposals.proposeQueued(raw, overloaded);
  expect(await refused).toBe("upgrade_required");
  expect(proposed).toEqual([1, 3]);
  expect(settled).toEqual([]);
});

test("when the first write is refused by its check, the next is judged against the pending bytes left, not sent whatever its size", async () => {
  const proposals = new Proposals();
  const { raw, proposed } = recordingCore();
  // Pending up to 100 bytes short of the bound.
  const chunk = proposalBytesPerTurnMax;
  for (let i = 0; i < pendingBytesMax / chunk - 1; i++) {
    proposals.enqueue(new Uint8Array(chunk), 1e12).catch(() => undefined);
    proposals.proposeQueued(raw, overloaded);
  }
  proposals.enqueue(new Uint8Array(chunk - 100), 1e12).catch(() => undefined);
  proposals.proposeQueued(raw, overloaded);
  const pendingBefore = proposed.reduce((sum, size) => sum + size, 0);
  expect(pendingBefore).toBe(pendingBytesMax - 100);
  // A small write that fits, refused when proposed, with a large one queued behind it.
  const refused = proposals.enqueue(new Uint8Array(10), 1e12, () => new KvError("conf_change_pending", "later")).catch((error: KvError) => error.code);
  proposals.enqueue(new Uint8Array(chunk), 1e12).catch(() => undefined);
  expect(proposals.canProposeQueued()).toBe(true);
  const count = proposed.length;
  proposals.proposeQueued(raw, overloaded);
  expect(await refused).toBe("conf_change_pending");
  expect(proposed.slice(count)).toEqual([]);
  expect(proposals.canProposeQueued()).toBe(false);
});
