// Proves the `kv chaos watch` checker can fail: it rejects a watcher's sequence with a missing event, a duplicate, an event out of order, a wrong value or an event from before its start, an acknowledged write absent from the committed changes, a phantom change and a final state that disagrees; and accepts exactly the reference restricted to a watcher's prefix and start.
import { describe, expect, test } from "bun:test";
import { checkWatch, type WatchCheckInput, type WatchEvent } from "../src/chaos/watch-check.ts";

const put = (version: number, key: string, value: string): WatchEvent => ({ version, kind: "put", key, value });
const del = (version: number, key: string): WatchEvent => ({ version, kind: "delete", key });

/** Committed changes after version 10, on two prefixes. */
const reference: WatchEvent[] = [put(11, "w/a/k0", "v1"), put(12, "w/b/k0", "v2"), put(13, "w/a/k1", "v3"), del(14, "w/a/k0"), put(15, "w/a/k1", "v4")];
const onA = reference.filter((e) => e.key.startsWith("w/a/"));

/** A healthy run: one watcher on w/a/ from the start, one on w/b/, one on w/a/ that started after 12. */
function healthy(): WatchCheckInput {
  return {
    reference,
    referenceAfter: 10,
    throughVersion: 16,
    watchers: [
      { label: "watcher 1", prefix: "w/a/", startAfter: 10, events: onA, reached: 16 },
      { label: "watcher 2", prefix: "w/b/", startAfter: 10, events: [put(12, "w/b/k0", "v2")], reached: 17 },
      { label: "watcher 3", prefix: "w/a/", startAfter: 12, events: onA.filter((e) => e.version > 12), reached: 16 },
    ],
    acknowledged: [
      { key: "w/a/k0", kind: "put", value: "v1", version: 11 },
      { key: "w/a/k1", kind: "put", value: "v3", version: 13 },
      { key: "w/a/k0", kind: "delete", version: 14, deleted: true },
    ],
    // No answer for these two: they may have taken effect (and did).
    unknown: [
      { key: "w/b/k0", kind: "put", value: "v2" },
      { key: "w/a/k1", kind: "put", value: "v4" },
      { key: "w/c/k0", kind: "put", value: "never-applied" },
    ],
    refused: [{ key: "w/c/k1", kind: "put", value: "refused-1" }],
    finalValues: new Map([
      ["w/a/k0", null],
      ["w/a/k1", "v4"],
      ["w/b/k0", "v2"],
    ]),
  };
}

function withWatcher1(events: WatchEvent[]): WatchCheckInput {
  const input = healthy();
  return { ...input, watchers: [{ ...(input.watchers[0] as WatchCheckInput["watchers"][number]), events }, ...input.watchers.slice(1)] };
}

describe("the watch checker", () => {
  test("accepts each watcher's exact share of the committed changes", () => {
    const result = checkWatch(healthy());
    expect(result.problems).toEqual([]);
    expect(result.ok).toBe(true);
    expect(result.eventsChecked).toBe(4 + 1 + 3);
    expect(result.acknowledgedChecked).toBe(3);
    expect(result.referenceEvents).toBe(5);
  });

  test("fails on a missing event", () => {
    const result = checkWatch(withWatcher1(onA.filter((e) => e.version !== 13)));
    expect(result.ok).toBe(false);
    expect(result.counts.missing).toBe(1);
    expect(result.problems[0]?.detail).toBe('watcher 1 never received put w/a/k1="v3" @13');
  });

  test("fails on a duplicate (the same change twice on one watcher, as after a bad resume)", () => {
    const result = checkWatch(withWatcher1([...onA.slice(0, 2), put(13, "w/a/k1", "v3"), ...onA.slice(2)]));
    expect(result.ok).toBe(false);
    expect(result.counts.duplicate).toBe(1);
    expect(result.counts.missing).toBe(0);
    expect(result.problems[0]?.detail).toBe('watcher 1 received put w/a/k1="v3" @13 twice');
  });

  test("fails on events out of order", () => {
    const [a, b, c, d] = onA as [WatchEvent, WatchEvent, WatchEvent, WatchEvent];
    const result = checkWatch(withWatcher1([a, c, b, d]));
    expect(result.ok).toBe(false);
    expect(result.counts.out_of_order).toBe(1);
    expect(result.problems[0]?.detail).toBe('watcher 1 received put w/a/k1="v3" @13 after delete w/a/k0 @14');
  });

  test("fails on a wrong value, and on a put where a delete was committed", () => {
    const wrong = checkWatch(withWatcher1(onA.map((e) => (e.version === 15 ? put(15, "w/a/k1", "v3") : e))));
    expect(wrong.ok).toBe(false);
    expect(wrong.counts.wrong_value).toBe(1);
    expect(wrong.problems[0]?.detail).toBe('watcher 1 received put w/a/k1="v3" @15 where the committed change is put w/a/k1="v4" @15');
    const kind = checkWatch(withWatcher1(onA.map((e) => (e.version === 14 ? put(14, "w/a/k0", "v1") : e))));
    expect(kind.counts.wrong_value).toBe(1);
  });

  test("fails on an event before the watcher's start, outside its prefix, or not committed at all", () => {
    const input = healthy();
    const early = { ...input, watchers: [input.watchers[0]!, input.watchers[1]!, { ...input.watchers[2]!, events: onA }] };
    const result = checkWatch(early);
    expect(result.ok).toBe(false);
    expect(result.counts.unexpected).toBe(1);
    expect(result.problems[0]?.detail).toBe('watcher 3 received put w/a/k0="v1" @11, at or before its start (after 12)');
    expect(checkWatch(withWatcher1([...onA, put(16, "w/a/k9", "ghost")])).counts.unexpected).toBe(1);
    expect(checkWatch(withWatcher1([onA[0]!, put(12, "w/b/k0", "v2"), ...onA.slice(1)])).counts.unexpected).toBe(1);
  });

  test("fails on an event past the last commit, and on one past it received before an earlier one (found in review: events past it were skipped)", () => {
    const ghost = checkWatch(withWatcher1([...onA, put(99, "w/a/k1", "ghost")]));
    expect(ghost.ok).toBe(false);
    expect(ghost.counts.unexpected).toBe(1);
    expect(ghost.problems[0]?.detail).toBe('watcher 1 received put w/a/k1="ghost" @99, past version 16, the last commit once the writers had stopped');
    // With the run's last commit at 13: @14 arrived before @11 and @13.
    const [a, b, c] = onA as [WatchEvent, WatchEvent, WatchEvent];
    const early = checkWatch({ ...withWatcher1([c, a, b]), throughVersion: 13 });
    expect(early.counts.out_of_order).toBe(2);
  });

  test("with single-key writes, a second change at one version is a phantom, even one an unanswered put could explain (found in review)", () => {
    const second = put(13, "w/b/k0", "v9");
    const base = healthy();
    const input = { ...base, reference: [...reference.slice(0, 3), second, ...reference.slice(3)], unknown: [...base.unknown, { key: "w/b/k0", kind: "put" as const, value: "v9" }], finalValues: new Map([...(base.finalValues ?? []), ["w/b/k0", "v9"]]) };
    const watchers = input.watchers.map((w) => (w.prefix === "w/b/" ? { ...w, events: [...w.events, second] } : w));
    expect(checkWatch({ ...input, watchers }).ok).toBe(true); // transactions may change two keys at one version
    const single = checkWatch({ ...input, watchers, singleKeyWrites: true });
    expect(single.counts.phantom).toBe(1);
    expect(single.problems[0]?.detail).toBe('put w/b/k0="v9" @13 is a second change at version 13, which changed "w/a/k1" (no write here changes two keys; found in review)');
  });

  test("fails when a watcher never reached the end", () => {
    const input = healthy();
    const result = checkWatch({ ...input, watchers: [{ ...input.watchers[0]!, reached: 14 }] });
    expect(result.ok).toBe(false);
    expect(result.counts.not_caught_up).toBe(1);
  });

  test("fails when an acknowledged write is missing from the committed changes, or is there with another value", () => {
    const input = healthy();
    const lost = checkWatch({ ...input, acknowledged: [...input.acknowledged, { key: "w/c/k0", kind: "put", value: "acked-but-lost", version: 16 }] });
    expect(lost.ok).toBe(false);
    expect(lost.counts.ack_missing).toBe(1);
    expect(lost.problems[0]?.detail).toBe('acknowledged put w/c/k0="acked-but-lost" @16 is not among the committed changes');
    const other = checkWatch({ ...input, acknowledged: [...input.acknowledged, { key: "w/a/k1", kind: "put", value: "v9", version: 15 }] });
    expect(other.counts.ack_missing).toBe(1);
    const beyond = checkWatch({ ...input, acknowledged: [...input.acknowledged, { key: "w/a/k1", kind: "put", value: "v9", version: 99 }] });
    expect(beyond.counts.ack_missing).toBe(1);
  });

  test("fails on a committed change no writer made, or made by a refused write", () => {
    const input = healthy();
    const ghost = checkWatch({ ...input, unknown: input.unknown.filter((w) => w.value !== "v4") });
    expect(ghost.ok).toBe(false);
    expect(ghost.counts.phantom).toBe(1);
    expect(ghost.problems[0]?.detail).toBe('put w/a/k1="v4" @15 is a committed change no writer\'s unanswered write explains');
    const refused = checkWatch({ ...input, unknown: input.unknown.filter((w) => w.value !== "v4"), refused: [{ key: "w/a/k1", kind: "put", value: "v4" }] });
    expect(refused.problems[0]?.detail).toBe('put w/a/k1="v4" @15 is a committed change of a write the cluster refused');
  });

  test("an unanswered write explains one committed change, not two (found in review: one unanswered put or delete excused any number)", () => {
    const twice = [...reference, put(16, "w/a/k1", "v4")];
    const input = { ...healthy(), reference: twice, throughVersion: 17 };
    const putTwice = checkWatch({ ...input, watchers: [] });
    expect(putTwice.counts.phantom).toBe(1);
    expect(putTwice.problems.find((p) => p.kind === "phantom")?.version).toBe(16);
    // One unanswered delete of w/a/k0 and two delete events of it (none acknowledged): one is a phantom.
    const deletes = [put(11, "w/a/k0", "v1"), del(12, "w/a/k0"), put(13, "w/a/k0", "v3"), del(14, "w/a/k0")];
    const oneDelete = checkWatch({
      reference: deletes,
      referenceAfter: 10,
      throughVersion: 15,
      watchers: [],
      acknowledged: [
        { key: "w/a/k0", kind: "put", value: "v1", version: 11 },
        { key: "w/a/k0", kind: "put", value: "v3", version: 13 },
      ],
      unknown: [{ key: "w/a/k0", kind: "delete" }],
      refused: [],
    });
    expect(oneDelete.counts.phantom).toBe(1);
    expect(checkWatch({ ...healthy(), watchers: [] }).ok).toBe(true);
  });

  test("fails when the healed cluster holds another value than the last committed change", () => {
    const input = healthy();
    const result = checkWatch({ ...input, finalValues: new Map([["w/a/k1", "v3"]]) });
    expect(result.ok).toBe(false);
    expect(result.counts.final_state).toBe(1);
    expect(checkWatch({ ...input, finalValues: new Map([["w/a/k0", "v1"]]) }).counts.final_state).toBe(1);
  });

  test("fails on a reference stream that is itself out of order", () => {
    const result = checkWatch({ ...healthy(), reference: [reference[1]!, reference[0]!, ...reference.slice(2)] });
    expect(result.ok).toBe(false);
    expect(result.counts.reference).toBe(1);
  });
});
