// Proves single rules of the Raft paper (Figure 2) on one core fed messages by hand, citing the section each checks.
import { describe, expect, test } from "bun:test";
import { createPrng } from "../src/lib/prng.ts";
import { MemoryStorage } from "../src/raft/memory-storage.ts";
import { defaultRaftLimits } from "../src/raft/raft.ts";
import { RawNode } from "../src/raft/raw-node.ts";
import { EntryType, type Entry, type Message } from "../src/raft/types.ts";

const entry = (index: number, term: number, text = `e${index}`): Entry => ({
  index,
  term,
  type: EntryType.Normal,
  data: new TextEncoder().encode(text),
});

const disks = new WeakMap<RawNode, MemoryStorage>();

/** A core for node `id` of voters 1..n whose disk holds `log` and `term`. */
function coreWith(id: number, n: number, log: Entry[] = [], term = 0, vote = 0, checkQuorum = false, holdVotesTicksMax = 0, votesHeldAtStart = false): RawNode {
  const storage = new MemoryStorage(Array.from({ length: n }, (_, i) => i + 1));
  storage.save({ term, vote, commit: 0 }, log, true);
  const node = new RawNode({
    id,
    storage,
    electionTicks: 10,
    heartbeatTicks: 1,
    prng: createPrng(id),
    applied: 0,
    ...defaultRaftLimits,
    // The rules of Figure 2 in isolation: no leader lease or startup quiet period (tested in raft-network).
    checkQuorum,
    holdVotesTicksMax,
    votesHeldAtStart,
  });
  disks.set(node, storage);
  return node;
}

/** Carries out every Ready (persisting to the node's memory disk) and returns the messages. */
function drain(node: RawNode): Message[] {
  const out: Message[] = [];
  while (node.hasReady()) {
    const ready = node.ready();
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    out.push(...ready.messages);
    node.advance(ready);
  }
  return out;
}

/** Campaigns through the pre-vote (thesis §9.6) and the real vote, granted by `voters`. */
function electLeader(node: RawNode, voters: number[]): void {
  node.campaign();
  drain(node);
  expect(node.basicStatus().preCandidate).toBe(true);
  for (const from of voters) node.step({ type: "pre-vote-response", from, to: node.basicStatus().id, term: node.basicStatus().term + 1, granted: true });
  expect(node.basicStatus().preCandidate).toBe(false);
  drain(node);
  for (const from of voters) node.step({ type: "vote-response", from, to: node.basicStatus().id, term: node.basicStatus().term, granted: true });
  expect(node.basicStatus().role).toBe("leader");
}

describe("elections (§5.2, §5.4.1)", () => {
  test("a server grants at most one vote per term", () => {
    const node = coreWith(1, 3);
    node.step({ type: "vote", from: 2, to: 1, term: 1, lastLogIndex: 0, lastLogTerm: 0, transfer: false });
    node.step({ type: "vote", from: 3, to: 1, term: 1, lastLogIndex: 0, lastLogTerm: 0, transfer: false });
    const answers = drain(node).filter((m) => m.type === "vote-response");
    expect(answers.map((m) => [m.to, m.type === "vote-response" && m.granted])).toEqual([
      [2, true],
      [3, false],
    ]);
    expect(node.basicStatus().vote).toBe(2);
  });

  test("a vote is refused to a candidate whose log is less up to date", () => {
    const node = coreWith(1, 3, [entry(1, 1), entry(2, 2)], 2);
    // Higher index but older last term: refused.
    node.step({ type: "vote", from: 2, to: 1, term: 3, lastLogIndex: 5, lastLogTerm: 1, transfer: false });
    // Same last term, shorter log: refused.
    node.step({ type: "vote", from: 3, to: 1, term: 4, lastLogIndex: 1, lastLogTerm: 2, transfer: false });
    const answers = drain(node).filter((m) => m.type === "vote-response");
    expect(answers.every((m) => m.type === "vote-response" && !m.granted)).toBe(true);
    expect(node.basicStatus().term).toBe(4);
  });

  test("a vote is persisted before the grant leaves the node (Figure 2, persistent state)", () => {
    const node = coreWith(1, 3);
    node.step({ type: "vote", from: 2, to: 1, term: 5, lastLogIndex: 0, lastLogTerm: 0, transfer: false });
    const ready = node.ready();
    expect(ready.messages.some((m) => m.type === "vote-response" && m.granted)).toBe(true);
    expect(ready.hardState).toEqual({ term: 5, vote: 2, commit: 0 });
    expect(ready.mustSync).toBe(true);
    node.advance(ready);
  });

  test("a pre-vote granted to an earlier round of the same term is not counted in a later round (found in a code review: a delayed grant raised the term of a server no voter would back any more)", () => {
    const candidate = coreWith(3, 3);
    const voter = coreWith(2, 3);
    const preVoteTo2 = (messages: Message[]) => messages.find((m) => m.type === "pre-vote" && m.to === 2)!;
    const answerOf = (request: Message) => {
      voter.step(request);
      return drain(voter).find((m) => m.type === "pre-vote-response")!;
    };
    candidate.campaign();
    const round1 = preVoteTo2(drain(candidate));
    const lateGrant = answerOf(round1); // granted, and held back by the network
    expect(lateGrant).toMatchObject({ granted: true });
    // A second round in the same term (the first won no quorum in time): same term asked for.
    candidate.campaign();
    const round2 = preVoteTo2(drain(candidate));
    expect(round2.term).toBe(round1.term);
    candidate.step(lateGrant);
    expect(candidate.basicStatus()).toMatchObject({ preCandidate: true, term: 0 });
    // The answer to this round counts.
    candidate.step(answerOf(round2));
    expect(candidate.basicStatus()).toMatchObject({ preCandidate: false, role: "candidate", term: 1 });
  });

  test("a pre-vote answer without a round (a peer of a release before rounds) still counts", () => {
    const candidate = coreWith(3, 3);
    candidate.campaign();
    drain(candidate);
    candidate.step({ type: "pre-vote-response", from: 2, to: 3, term: 1, granted: true });
    expect(candidate.basicStatus()).toMatchObject({ preCandidate: false, role: "candidate", term: 1 });
  });

  test("a server does not campaign while a committed membership change is not yet applied (etcd's guard)", () => {
    // Entry 2 (committed, not applied) may change who the voters are: this server cannot know yet.
    const confChange: Entry = { index: 2, term: 1, type: EntryType.ConfChange, data: new Uint8Array([1]) };
    const storage = new MemoryStorage([1, 2, 3]);
    storage.save({ term: 1, vote: 0, commit: 2 }, [entry(1, 1), confChange], true);
    const node = new RawNode({ id: 1, storage, electionTicks: 10, heartbeatTicks: 1, prng: createPrng(1), applied: 1, ...defaultRaftLimits, checkQuorum: false });
    disks.set(node, storage);
    const campaigns = (messages: Message[]) => messages.filter((m) => m.type === "pre-vote" || m.type === "vote");
    node.campaign();
    node.step({ type: "timeout-now", from: 2, to: 1, term: 1 });
    expect(node.basicStatus().role).toBe("follower");
    // Hold back the committed entries (the driver has not applied them) while the timer runs out.
    for (let i = 0; i < 30; i++) node.tick();
    expect(node.basicStatus().role).toBe("follower");
    // Once the change is applied, it campaigns as usual.
    const messages = drain(node);
    expect(campaigns(messages)).toEqual([]);
    node.campaign();
    expect(campaigns(drain(node)).length).toBe(2);
  });

  test("a server started with an empty log votes for a candidate with a log only once it committed an entry of its first leader's term", () => {
    const granted = (node: RawNode, from: number, term: number, lastLogIndex: number, lastLogTerm: number, type: "vote" | "pre-vote" = "vote") => {
      node.step({ type, from, to: 1, term, lastLogIndex, lastLogTerm, transfer: false });
      const answer = drain(node).find((m) => m.type === "vote-response" || m.type === "pre-vote-response");
      return (answer?.type === "vote-response" || answer?.type === "pre-vote-response") && answer.granted;
    };
    // A cluster's first election is not held up: the candidate's log is empty too.
    expect(granted(coreWith(1, 3, [], 0, 0, false, 1_000), 2, 1, 0, 0)).toBe(true);
    const node = coreWith(1, 3, [], 0, 0, false, 1_000);
    expect(node.votesHeld()).toBe(true);
    // Its log may be a voter's whose data dir was emptied: no vote for a candidate with a log.
    expect(granted(node, 2, 3, 5, 2)).toBe(false);
    expect(node.heldVoteRefusals()).toBe(1); // the node logs its first refusal
    // The first leader it hears from leads term T = 4.
    node.step({ type: "heartbeat", from: 3, to: 1, term: 4, commit: 0, readContext: "1" });
    drain(node);
    node.step({ type: "append", from: 3, to: 1, term: 4, prevLogIndex: 0, prevLogTerm: 0, entries: [entry(1, 2), entry(2, 3)], commit: 2 });
    drain(node);
    expect(node.basicStatus().commit).toBe(2);
    // Committed up to an entry of term 3 only: still held. Pre-votes (they leave the term as it is):
    expect(node.votesHeld()).toBe(true);
    expect(granted(node, 2, 5, 9, 3, "pre-vote")).toBe(false); // its last entry older than T: it may lack what we acknowledged
    expect(granted(node, 2, 5, 3, 4, "pre-vote")).toBe(true); // one of term T: it holds everything committed before T
    // Nor does it campaign on such a log itself: its own vote would count (found in review).
    node.campaign();
    expect(drain(node).filter((m) => m.type === "pre-vote" || m.type === "vote")).toEqual([]);
    expect(node.basicStatus().preCandidate).toBe(false);
    // An entry of term 4 committed: caught up.
    node.step({ type: "append", from: 3, to: 1, term: 4, prevLogIndex: 2, prevLogTerm: 3, entries: [entry(3, 4)], commit: 3 });
    drain(node);
    expect(node.basicStatus().commit).toBe(3);
    expect(node.votesHeld()).toBe(false);
    expect(granted(node, 2, 6, 3, 4)).toBe(true);
    // A leader's log holds every committed entry: elected, it holds its vote no more.
    const elected = coreWith(1, 3, [], 0, 0, false, 1_000);
    electLeader(elected, [2, 3]);
    expect(elected.votesHeld()).toBe(false);
    // The hold ends after holdVotesTicksMax ticks, caught up or not.
    const expiring = coreWith(1, 3, [], 0, 0, false, 20);
    for (let tick = 0; tick < 19; tick++) expiring.tick();
    expect(granted(expiring, 2, 3, 5, 2, "pre-vote")).toBe(false);
    expiring.tick();
    expect(expiring.votesHeld()).toBe(false);
    expect(granted(expiring, 2, 3, 5, 2, "pre-vote")).toBe(true);
    // A hold recorded when the server last stopped holds again, though the log is no longer empty.
    expect(coreWith(1, 3, [entry(1, 1)], 1, 0, false, 1_000, true).votesHeld()).toBe(true);
    // A server whose log is not empty at start, or with the rule off, votes as before.
    expect(coreWith(1, 3, [entry(1, 1)], 1, 0, false, 1_000).votesHeld()).toBe(false);
    expect(granted(coreWith(1, 3), 2, 3, 5, 2)).toBe(true);
  });

  test("a candidate becomes leader with a majority and appends a no-op of its term", () => {
    const node = coreWith(1, 5, [entry(1, 1)], 1);
    electLeader(node, [2, 3]);
    expect(node.basicStatus().lastIndex).toBe(2);
    expect(node.logTerm(2)).toBe(2);
  });
});

describe("log replication (§5.3)", () => {
  test("a follower rejects an append whose previous entry does not match, with a hint to skip the term", () => {
    const node = coreWith(2, 3, [entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)], 1);
    node.step({ type: "append", from: 1, to: 2, term: 3, prevLogIndex: 6, prevLogTerm: 3, entries: [], commit: 0 });
    const [reply] = drain(node).filter((m) => m.type === "append-response");
    expect(reply).toMatchObject({ success: false, index: 6, hintIndex: 4, hintTerm: 1 });
  });

  test("a follower knows its leader's commit index from its appends, beyond its own log's end; a heartbeat's (capped by the follower's match) does not lower it", () => {
    const node = coreWith(1, 3);
    node.step({ type: "append", from: 2, to: 1, term: 1, prevLogIndex: 0, prevLogTerm: 0, entries: [entry(1, 1), entry(2, 1)], commit: 50 });
    drain(node);
    expect(node.basicStatus()).toMatchObject({ commit: 2, leaderCommit: 50 });
    node.step({ type: "heartbeat", from: 2, to: 1, term: 1, commit: 2, readContext: "1" });
    drain(node);
    expect(node.basicStatus().leaderCommit).toBe(50);
    // A new term's leader has said nothing yet.
    node.step({ type: "heartbeat", from: 3, to: 1, term: 2, commit: 0, readContext: "1" });
    expect(node.basicStatus().leaderCommit).toBe(2);
  });

  test("a follower truncates a conflicting suffix and appends the leader's entries", () => {
    const node = coreWith(2, 3, [entry(1, 1), entry(2, 1), entry(3, 2, "old")], 2);
    node.step({ type: "append", from: 1, to: 2, term: 3, prevLogIndex: 2, prevLogTerm: 1, entries: [entry(3, 3, "new")], commit: 3 });
    const ready = node.ready();
    expect(ready.entries.map((e) => [e.index, e.term])).toEqual([[3, 3]]);
    // The new entry is committed but not yet on this node's disk: it is applied in a later Ready.
    expect(ready.committedEntries.map((e) => new TextDecoder().decode(e.data))).toEqual(["e1", "e2"]);
    expect(ready.messages).toContainEqual(expect.objectContaining({ type: "append-response", success: true, index: 3 }));
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    node.advance(ready);
    expect(node.ready().committedEntries.map((e) => new TextDecoder().decode(e.data))).toEqual(["new"]);
  });

  test("a committed entry is handed to apply only once this node's own copy is on disk", () => {
    const node = coreWith(2, 3, [entry(1, 1)], 1);
    // The leader's append carries entries 2-3, and already a commit index covering them (the other
    // follower and the leader hold them).
    node.step({ type: "append", from: 1, to: 2, term: 1, prevLogIndex: 1, prevLogTerm: 1, entries: [entry(2, 1), entry(3, 1)], commit: 3 });
    const first = node.ready();
    expect(first.committedEntries.map((e) => e.index)).toEqual([1]);
    disks.get(node)!.save(first.hardState, first.entries, false);
    // Written, not yet durable (the driver's fsync runs in the background).
    node.advance(first, false);
    expect(node.hasReady()).toBe(false);
    node.persisted(2, 1);
    expect(node.ready().committedEntries.map((e) => e.index)).toEqual([2]);
  });

  test("a stale leader is told the newer term and steps down (§5.1)", () => {
    const node = coreWith(1, 3, [], 1);
    electLeader(node, [2]);
    drain(node);
    node.step({ type: "append-response", from: 2, to: 1, term: 9, success: false, index: 0, hintIndex: 0, hintTerm: 0 });
    expect(node.basicStatus().role).toBe("follower");
    expect(node.basicStatus().term).toBe(9);
  });
});

describe("flow control to a follower (replicate state)", () => {
  /** A leader of three whose followers acknowledged its first entry: both in replicate state. */
  function replicatingLeader(): { node: RawNode; term: number } {
    const node = coreWith(1, 3);
    electLeader(node, [2]);
    const term = node.basicStatus().term;
    for (const m of drain(node)) {
      if (m.type === "append") node.step({ type: "append-response", from: m.to, to: 1, term, success: true, index: m.prevLogIndex + m.entries.length, hintIndex: 0, hintTerm: 0 });
    }
    drain(node);
    return { node, term };
  }
  const appendsTo = (messages: Message[], to: number) => messages.filter((m): m is Extract<Message, { type: "append" }> => m.type === "append" && m.to === to);
  const dataBytes = (m: Extract<Message, { type: "append" }>) => m.entries.reduce((sum, e) => sum + e.data.byteLength, 0);

  test("at most inflightBytesMax of entries go unacknowledged to a follower; its acks open the window again", () => {
    const { node, term } = replicatingLeader();
    const sent: Extract<Message, { type: "append" }>[] = [];
    for (let i = 0; i < 20; i++) {
      node.propose([new Uint8Array(1 << 20).fill(i)]);
      sent.push(...appendsTo(drain(node), 2));
    }
    const bytes = sent.reduce((sum, m) => sum + dataBytes(m), 0);
    expect(bytes).toBeGreaterThanOrEqual(defaultRaftLimits.inflightBytesMax);
    expect(bytes).toBeLessThanOrEqual(defaultRaftLimits.inflightBytesMax + (1 << 20));
    // Follower 2 acknowledges what it got: the rest goes to it.
    const last = sent[sent.length - 1]!;
    node.step({ type: "append-response", from: 2, to: 1, term, success: true, index: last.prevLogIndex + last.entries.length, hintIndex: 0, hintTerm: 0 });
    const more = appendsTo(drain(node), 2);
    expect(more.length).toBeGreaterThan(0);
    expect(more[0]!.prevLogIndex).toBe(last.prevLogIndex + last.entries.length);
  });

  test("appends a follower has not acknowledged while it answers heartbeats are taken for lost only after lostAppendHeartbeatRounds rounds", async () => {
    const { lostAppendHeartbeatRounds } = await import("../src/raft/progress.ts");
    const { node, term } = replicatingLeader();
    node.propose([new TextEncoder().encode("slow fsync")]);
    const [first] = appendsTo(drain(node), 2);
    expect(first).toBeDefined();
    // Follower 2 answers each heartbeat at once; its ack waits for an fsync slower than many rounds.
    for (let round = 1; round <= lostAppendHeartbeatRounds; round++) {
      node.tick();
      const messages = drain(node);
      const resent = appendsTo(messages, 2).filter((m) => m.entries.length > 0);
      if (round < lostAppendHeartbeatRounds) expect(resent).toEqual([]);
      for (const m of messages) {
        if (m.type === "heartbeat" && m.to === 2) node.step({ type: "heartbeat-response", from: 2, to: 1, term, readContext: m.readContext });
      }
      const afterAnswer = appendsTo(drain(node), 2).filter((m) => m.entries.length > 0);
      if (round < lostAppendHeartbeatRounds) expect(afterAnswer).toEqual([]);
      else expect(afterAnswer.map((m) => m.prevLogIndex)).toEqual([first!.prevLogIndex]);
    }
  });

  test("answers to old heartbeats arriving all at once send one append, not one each (a follower back from a freeze)", () => {
    const { node, term } = replicatingLeader();
    // Entries to send, and follower 2's window full of appends it will not answer: it froze.
    const sent: Extract<Message, { type: "append" }>[] = [];
    for (let i = 0; i < 40; i++) {
      node.propose([new Uint8Array(1 << 20).fill(i)]);
      sent.push(...appendsTo(drain(node), 2));
    }
    expect(sent.reduce((sum, m) => sum + dataBytes(m), 0)).toBeGreaterThanOrEqual(defaultRaftLimits.inflightBytesMax);
    // Heartbeats go out while it is frozen; follower 3 answers them, follower 2 does not.
    const contexts: string[] = [];
    for (let t = 0; t < 30; t++) {
      node.tick();
      for (const m of drain(node)) {
        if (m.type === "heartbeat" && m.to === 2) contexts.push(m.readContext);
        if (m.type === "heartbeat" && m.to === 3) node.step({ type: "heartbeat-response", from: 3, to: 1, term, readContext: m.readContext });
      }
    }
    expect(node.basicStatus().role).toBe("leader");
    // It comes back and answers every heartbeat it held, in one turn: each answer used to free a
    // slot of its window and send another append of up to 1 MiB (30 here), a burst that held a
    // leader's loop past its election timeout.
    for (const readContext of contexts) node.step({ type: "heartbeat-response", from: 2, to: 1, term, readContext });
    const burst = appendsTo(drain(node), 2).filter((m) => m.entries.length > 0);
    expect(burst.length).toBeLessThanOrEqual(2);
    // The next heartbeat's answer opens the window again, as before.
    node.tick();
    const heartbeat = heartbeatTo(drain(node), 2);
    ack(node, heartbeat);
    expect(appendsTo(drain(node), 2).filter((m) => m.entries.length > 0).length).toBe(1);
  });
});

describe("commitment (§5.4.2, Figure 8)", () => {
  test("a leader does not commit an older term's entry by counting replicas, only through its own", () => {
    // Node 1 leads term 4 holding (2, term 2) that a majority also holds: not committed by that alone.
    const node = coreWith(1, 5, [entry(1, 1), entry(2, 2)], 3);
    electLeader(node, [2, 3]);
    expect(node.basicStatus().term).toBe(4);
    drain(node);
    node.step({ type: "append-response", from: 2, to: 1, term: 4, success: true, index: 2, hintIndex: 0, hintTerm: 0 });
    node.step({ type: "append-response", from: 3, to: 1, term: 4, success: true, index: 2, hintIndex: 0, hintTerm: 0 });
    expect(node.basicStatus().commit).toBe(0);
    // Once the term-4 no-op at index 3 is on a majority, it and everything before it commit.
    node.step({ type: "append-response", from: 2, to: 1, term: 4, success: true, index: 3, hintIndex: 0, hintTerm: 0 });
    node.step({ type: "append-response", from: 3, to: 1, term: 4, success: true, index: 3, hintIndex: 0, hintTerm: 0 });
    expect(node.basicStatus().commit).toBe(3);
  });
});

describe("leases (thesis §6.4.1)", () => {
  test("a server that just started refuses votes for one election timeout: it may have backed a lease before it crashed", () => {
    const node = coreWith(1, 3, [], 1, 0, true);
    node.step({ type: "vote", from: 2, to: 1, term: 2, lastLogIndex: 5, lastLogTerm: 1, transfer: false });
    expect(node.basicStatus().term).toBe(1);
    expect(drain(node).filter((m) => m.type === "vote-response")).toEqual([]);
    for (let i = 0; i < 10; i++) {
      node.tick();
      drain(node);
      if (node.basicStatus().role !== "follower") break;
    }
    // Past the quiet period (or once it campaigns itself) it takes part in elections again.
    node.step({ type: "vote", from: 2, to: 1, term: 9, lastLogIndex: 5, lastLogTerm: 1, transfer: false });
    expect(node.basicStatus().term).toBe(9);
  });

  test("a server that is no voter by its own configuration lets its leader's lease end one election timeout after it last heard from it", () => {
    // Node 4 was added as a voter, but its empty log still holds the old configuration {1, 2, 3}.
    // Swarm seed 702661: it kept naming the dead leader forever and refused every pre-vote.
    const node = coreWith(4, 3, [], 1, 0, true);
    for (let i = 0; i < 10; i++) node.tick(); // past the quiet period after a start
    node.step({ type: "heartbeat", from: 1, to: 4, term: 1, commit: 0, readContext: "" });
    drain(node);
    node.step({ type: "pre-vote", from: 2, to: 4, term: 2, lastLogIndex: 5, lastLogTerm: 1, transfer: false });
    expect(drain(node).filter((m) => m.type === "pre-vote-response" && m.granted)).toEqual([]); // the lease holds
    // Past its randomized election timeout (at most 2 * 10 - 1 ticks) without the leader.
    for (let i = 0; i < 19; i++) node.tick();
    drain(node);
    node.step({ type: "pre-vote", from: 2, to: 4, term: 2, lastLogIndex: 5, lastLogTerm: 1, transfer: false });
    expect(drain(node)).toContainEqual(expect.objectContaining({ type: "pre-vote-response", granted: true }));
  });

  test("a follower that acknowledged its leader votes for no one else for an election timeout, even after a stale answer of a higher term moved its term on (found in review: a stale lease read)", () => {
    const node = coreWith(1, 3, [entry(1, 1)], 1, 0, true);
    for (let i = 0; i < 10; i++) node.tick(); // past the quiet period after a start
    node.step({ type: "heartbeat", from: 2, to: 1, term: 1, commit: 1, readContext: "" });
    drain(node);
    // A rejection of a pre-vote this node sent before it heard from 2 again, from 3, now a
    // candidate of term 2: it moves the term on, and leaves no leader.
    node.step({ type: "pre-vote-response", from: 3, to: 1, term: 2, granted: false });
    expect([node.basicStatus().term, node.basicStatus().leaderId]).toEqual([2, 0]);
    drain(node);
    // 3's vote request of that term: refused, 2 may still serve lease reads.
    node.step({ type: "vote", from: 3, to: 1, term: 2, lastLogIndex: 1, lastLogTerm: 1, transfer: false });
    expect(drain(node).filter((m) => m.type === "vote-response")).toEqual([expect.objectContaining({ to: 3, granted: false })]);
    expect(node.basicStatus().vote).toBe(0);
    // One the leader sent on (a transfer) is granted; and past the timeout, anyone's.
    const other = coreWith(1, 3, [entry(1, 1)], 1, 0, true);
    for (let i = 0; i < 10; i++) other.tick();
    other.step({ type: "heartbeat", from: 2, to: 1, term: 1, commit: 1, readContext: "" });
    other.step({ type: "pre-vote-response", from: 3, to: 1, term: 2, granted: false });
    drain(other);
    other.step({ type: "vote", from: 3, to: 1, term: 2, lastLogIndex: 1, lastLogTerm: 1, transfer: true });
    expect(drain(other).filter((m) => m.type === "vote-response")).toEqual([expect.objectContaining({ to: 3, granted: true })]);
    // An election timeout of real time later (made up, so its own election timer stays put).
    node.elapse(10);
    drain(node);
    expect(node.basicStatus().role).toBe("follower");
    node.step({ type: "vote", from: 3, to: 1, term: 2, lastLogIndex: 1, lastLogTerm: 1, transfer: false });
    expect(drain(node).filter((m) => m.type === "vote-response")).toEqual([expect.objectContaining({ to: 3, granted: true })]);
  });

  test("a rejected read-index answer of a newer term does not make its sender that term's leader (found in review: the real candidate's vote was refused)", () => {
    const node = coreWith(1, 3, [entry(1, 1)], 1, 0, true);
    for (let i = 0; i < 10; i++) node.tick(); // past the quiet period, and no leader heard since
    // 2, deposed by term 2, rejects the reads this node had sent it, in term 2.
    node.step({ type: "read-index-response", from: 2, to: 1, term: 2, readContext: "r1", index: 0, rejected: true });
    expect([node.basicStatus().term, node.basicStatus().leaderId]).toEqual([2, 0]);
    drain(node);
    node.step({ type: "vote", from: 3, to: 1, term: 2, lastLogIndex: 1, lastLogTerm: 1, transfer: false });
    expect(drain(node).filter((m) => m.type === "vote-response")).toEqual([expect.objectContaining({ to: 3, granted: true })]);
  });

  test("a heartbeat whose commit lies past the follower's log shows it lost acknowledged entries; one within it does not", () => {
    // A heartbeat's commit is min(the follower's acknowledged match, the leader's commit): a follower
    // whose log ends before it lost what it acknowledged (a wiped data dir restarted as before).
    const kept = coreWith(2, 3, [entry(1, 1), entry(2, 1)], 1);
    kept.step({ type: "heartbeat", from: 1, to: 2, term: 1, commit: 2, readContext: "" });
    expect(kept.lostLog()).toBeUndefined();
    expect(kept.basicStatus().commit).toBe(2);
    const wiped = coreWith(2, 3, [], 1);
    wiped.step({ type: "heartbeat", from: 1, to: 2, term: 1, commit: 2, readContext: "" });
    expect(wiped.lostLog()).toEqual({ leaderId: 1, term: 1, acknowledged: 2, lastIndex: 0 });
    expect(wiped.basicStatus().commit).toBe(0);
  });

  test("an append that differs from the follower's log at an index it committed shows the cluster lost committed entries; the follower does not answer it (found in review)", () => {
    const committedThree = () => {
      const node = coreWith(2, 3, [entry(1, 1), entry(2, 1), entry(3, 1)], 1);
      node.step({ type: "heartbeat", from: 1, to: 2, term: 1, commit: 3, readContext: "" });
      drain(node);
      expect(node.basicStatus().commit).toBe(3);
      return node;
    };
    // A leader of term 2 elected without entries 2-3: its entry 2 is of term 2.
    const byEntry = committedThree();
    byEntry.step({ type: "append", from: 3, to: 2, term: 2, prevLogIndex: 1, prevLogTerm: 1, entries: [entry(2, 2)], commit: 2 });
    expect(drain(byEntry).filter((m) => m.type === "append-response")).toEqual([]);
    expect(byEntry.lostLog()).toEqual({ leaderId: 3, term: 2, acknowledged: 3, lastIndex: 3, conflict: { index: 2, ourTerm: 1, leaderTerm: 2 } });
    // A previous entry's term alone is no evidence: a forged append must not stop a node (the peer fuzzer).
    const byPrevious = committedThree();
    byPrevious.step({ type: "append", from: 3, to: 2, term: 2, prevLogIndex: 2, prevLogTerm: 2, entries: [], commit: 2 });
    expect(byPrevious.lostLog()).toBeUndefined();
    // One that agrees below the commit index is answered as before.
    const agreeing = committedThree();
    agreeing.step({ type: "append", from: 3, to: 2, term: 2, prevLogIndex: 1, prevLogTerm: 1, entries: [entry(2, 1), entry(3, 1), entry(4, 2)], commit: 4 });
    expect(agreeing.lostLog()).toBeUndefined();
    expect(drain(agreeing).some((m) => m.type === "append-response" && m.success)).toBe(true);
  });

  test("a leadership transfer's vote is honoured even inside the quiet period", () => {
    const node = coreWith(1, 3, [], 1, 0, true);
    node.step({ type: "vote", from: 2, to: 1, term: 2, lastLogIndex: 5, lastLogTerm: 1, transfer: true });
    expect(drain(node)).toContainEqual(expect.objectContaining({ type: "vote-response", granted: true }));
  });
});

/** A leader (node 1 of voters 1..n, leases on) whose no-op of its term is committed by everyone. */
describe("time made up (elapse)", () => {
  test("moves a leader's heartbeat timer as ticks do, so a round goes out by real time; a follower's election timer does not move", () => {
    const core = (id: number) =>
      new RawNode({ id, storage: new MemoryStorage([1, 2, 3]), electionTicks: 10, heartbeatTicks: 5, prng: createPrng(id), applied: 0, ...defaultRaftLimits, checkQuorum: false });
    const leader = core(1);
    leader.campaign();
    leader.step({ type: "pre-vote-response", from: 2, to: 1, term: 1, granted: true });
    leader.step({ type: "vote-response", from: 2, to: 1, term: 1, granted: true });
    expect(leader.basicStatus().role).toBe("leader");
    const sent = () => {
      const messages: Message[] = [];
      while (leader.hasReady()) {
        const ready = leader.ready();
        messages.push(...ready.messages);
        leader.advance(ready);
      }
      return messages.filter((m) => m.type === "heartbeat").map((m) => m.to);
    };
    sent();
    leader.elapse(4);
    expect(sent()).toEqual([]);
    leader.elapse(1);
    expect(sent().sort()).toEqual([2, 3]);
    // Ticks and time made up count together toward the next round.
    leader.tick();
    leader.tick();
    leader.elapse(2);
    expect(sent()).toEqual([]);
    leader.tick();
    expect(sent().sort()).toEqual([2, 3]);
    // A follower that was stalled does not campaign on the time made up alone.
    const follower = core(2);
    follower.elapse(100);
    expect(follower.basicStatus().role).toBe("follower");
    expect(follower.hasReady() ? follower.ready().messages : []).toEqual([]);
  });
});

function committedLeader(n: number): RawNode {
  const node = coreWith(1, n, [], 1, 0, true);
  electLeader(node, Array.from({ length: n - 1 }, (_, i) => i + 2));
  const term = node.basicStatus().term;
  for (const m of drain(node)) {
    if (m.type === "append") node.step({ type: "append-response", from: m.to, to: 1, term, success: true, index: m.prevLogIndex + m.entries.length, hintIndex: 0, hintTerm: 0 });
  }
  drain(node);
  expect(node.basicStatus().commit).toBe(node.basicStatus().lastIndex);
  return node;
}

/** Carries out every Ready and returns the messages and the read states. */
function drainReads(node: RawNode): { messages: Message[]; readStates: string[] } {
  const messages: Message[] = [];
  const readStates: string[] = [];
  while (node.hasReady()) {
    const ready = node.ready();
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    messages.push(...ready.messages);
    readStates.push(...ready.readStates.map((state) => state.readContext));
    node.advance(ready);
  }
  return { messages, readStates };
}

/** The follower's answer to a heartbeat, echoing its context. */
function ack(node: RawNode, heartbeat: Message | undefined): void {
  if (heartbeat?.type !== "heartbeat") throw new Error("no heartbeat to answer");
  node.step({ type: "heartbeat-response", from: heartbeat.to, to: heartbeat.from, term: heartbeat.term, readContext: heartbeat.readContext });
}

const heartbeatTo = (messages: Message[], to: number) => messages.find((m) => m.type === "heartbeat" && m.to === to);

describe("ReadIndex rounds and leases (thesis §6.4, §6.4.1)", () => {
  test("a delayed ack of an older round does not confirm a read that arrived after it, even under a reused context", () => {
    const node = committedLeader(3);
    const term = node.basicStatus().term;
    const answersTo2 = (messages: Message[]) => messages.filter((m) => m.type === "read-index-response" && m.to === 2);
    node.step({ type: "read-index", from: 2, to: 1, term, readContext: "2.1" });
    const first = drainReads(node).messages;
    ack(node, heartbeatTo(first, 2));
    expect(answersTo2(drainReads(node).messages).length).toBe(1);
    // Node 2 restarts in the same term and numbers its reads from 1 again.
    node.step({ type: "read-index", from: 2, to: 1, term, readContext: "2.1" });
    const second = drainReads(node).messages;
    ack(node, heartbeatTo(first, 3)); // node 3's answer to the first round, delayed until now
    expect(answersTo2(drainReads(node).messages)).toEqual([]);
    ack(node, heartbeatTo(second, 3));
    expect(answersTo2(drainReads(node).messages).length).toBe(1);
  });

  test("reads that arrive together share one heartbeat round; a read after that round went out waits for the next", () => {
    const node = committedLeader(3);
    const term = node.basicStatus().term;
    node.readIndex("own");
    node.step({ type: "read-index", from: 2, to: 1, term, readContext: "2.1" });
    node.step({ type: "read-index", from: 3, to: 1, term, readContext: "3.1" });
    const together = drainReads(node).messages;
    const heartbeats = together.filter((m) => m.type === "heartbeat");
    expect(heartbeats.map((m) => m.to).sort()).toEqual([2, 3]); // one round for all three reads
    node.step({ type: "read-index", from: 2, to: 1, term, readContext: "2.2" });
    const later = drainReads(node).messages;
    ack(node, heartbeatTo(together, 2)); // the first round's quorum: 1 and 2
    const released = drainReads(node);
    expect(released.readStates).toEqual(["own"]);
    expect(released.messages.filter((m) => m.type === "read-index-response").map((m) => (m.type === "read-index-response" ? m.readContext : "")).sort()).toEqual(["2.1", "3.1"]);
    // 2.2 arrived after the first round was sent: only the round sent for it confirms it.
    ack(node, heartbeatTo(later, 3));
    expect(drainReads(node).messages.filter((m) => m.type === "read-index-response").map((m) => (m.type === "read-index-response" ? m.readContext : ""))).toEqual(["2.2"]);
  });

  test("acks of a member removed meanwhile count toward neither a pending read nor the lease", () => {
    const node = committedLeader(5);
    // A lease from a round that 4 and 5 acknowledged: a quorum of {1..5}, not of {1..4}.
    node.tick();
    const leaseRound = drainReads(node).messages;
    ack(node, heartbeatTo(leaseRound, 4));
    ack(node, heartbeatTo(leaseRound, 5));
    node.readIndex("lease-before", true);
    expect(drainReads(node).readStates).toEqual(["lease-before"]);
    // A read that 5 acknowledges, then 5 is removed.
    node.readIndex("r1");
    const readRound = drainReads(node).messages;
    ack(node, heartbeatTo(readRound, 5));
    node.applyConfChange({ type: "remove", nodeId: 5 }, node.basicStatus().commit);
    const afterChange = drainReads(node);
    ack(node, heartbeatTo(readRound, 2)); // {1, 2} is no quorum of {1, 2, 3, 4}
    expect(drainReads(node).readStates).toEqual([]);
    node.readIndex("lease-after", true);
    expect(drainReads(node).readStates).toEqual([]); // no lease: it needs a round trip
    // Fresh acks of rounds sent after the change confirm both reads.
    const fresh = [...afterChange.messages, ...readRound];
    for (const id of [2, 3]) ack(node, [...fresh].reverse().find((m) => m.type === "heartbeat" && m.to === id));
    node.tick();
    const next = drainReads(node);
    for (const id of [2, 3]) ack(node, heartbeatTo(next.messages, id));
    expect([...next.readStates, ...drainReads(node).readStates].sort()).toEqual(["lease-after", "r1"]);
  });

  test("a lease is not rebuilt from acks gathered while a leadership transfer was pending and then abandoned", () => {
    const node = committedLeader(3);
    node.transferLeadership(2); // node 2 is caught up: it is told to campaign now
    expect(drainReads(node).messages).toContainEqual(expect.objectContaining({ type: "timeout-now", to: 2 }));
    // Node 2 never answers; node 3 acknowledges every heartbeat until the transfer is abandoned.
    for (let i = 0; i < 10; i++) {
      node.tick();
      ack(node, heartbeatTo(drainReads(node).messages, 3));
    }
    expect(node.basicStatus().role).toBe("leader");
    expect(node.basicStatus().leadTransferee).toBe(0);
    // Node 2 may have won an election that ignored leases: no lease read without a round trip.
    node.readIndex("lease", true);
    expect(drainReads(node).readStates).toEqual([]);
  });
});

describe("forged input", () => {
  test("a leader ignores an append or heartbeat that claims leadership in its own term (it cannot come from a correct peer)", () => {
    const node = coreWith(1, 3, [], 1);
    electLeader(node, [2]);
    drain(node);
    const term = node.basicStatus().term;
    node.step({ type: "heartbeat", from: 2, to: 1, term, commit: 0, readContext: "" });
    node.step({ type: "append", from: 3, to: 1, term, prevLogIndex: 0, prevLogTerm: 0, entries: [], commit: 0 });
    expect(node.basicStatus().role).toBe("leader");
    expect(node.basicStatus().term).toBe(term);
  });

  test("a leader ignores an acknowledgement or rejection beyond its own log, and keeps replicating to that follower", () => {
    const node = coreWith(1, 3, [], 1);
    electLeader(node, [2, 3]);
    drain(node);
    const term = node.basicStatus().term;
    const last = node.basicStatus().lastIndex;
    // A correct follower only ever acknowledges or rejects an index the leader sent it.
    node.step({ type: "append-response", from: 2, to: 1, term, success: true, index: 1e12, hintIndex: 0, hintTerm: 0 });
    node.step({ type: "append-response", from: 3, to: 1, term, success: false, index: 2 ** 40, hintIndex: 2 ** 40, hintTerm: term });
    for (const peer of [2, 3]) expect(node.matchIndexOf(peer)).toBeLessThanOrEqual(last);
    expect(node.basicStatus().commit).toBeLessThanOrEqual(last);
    // The next write still goes to both followers.
    node.propose([new TextEncoder().encode("after the forgery")]);
    for (let i = 0; i < 5; i++) {
      node.tick();
      for (const m of drain(node)) {
        if (m.type === "append") {
          const index = m.prevLogIndex + m.entries.length;
          node.step({ type: "append-response", from: m.to, to: 1, term, success: true, index, hintIndex: 0, hintTerm: 0 });
        } else if (m.type === "heartbeat") {
          node.step({ type: "heartbeat-response", from: m.to, to: 1, term, readContext: m.readContext });
        }
      }
    }
    for (const peer of [2, 3]) expect(node.matchIndexOf(peer)).toBe(last + 1);
  });
});

describe("snapshots (thesis §5.1)", () => {
  test("a leader waits for a long snapshot transfer the driver reports in progress, and gives up on a silent one", async () => {
    const { snapshotHeartbeatsMax } = await import("../src/raft/progress.ts");
    const { Progress } = await import("../src/raft/progress.ts");
    const reported = new Progress(1, 4);
    reported.becomeSnapshot(50);
    const silent = new Progress(1, 4);
    silent.becomeSnapshot(50);
    for (let round = 0; round <= 2 * snapshotHeartbeatsMax; round++) {
      reported.snapshotStillSending();
      reported.heartbeatAnswered();
      silent.heartbeatAnswered();
    }
    expect(reported.state).toBe("snapshot");
    expect(silent.state).toBe("probe");
    expect(silent.nextIndex).toBe(51); // probe just past the snapshot it most likely installed
  });
});

describe("applies answered later (advance with applyConfirmedLater)", () => {
  /** Acks every append of `messages` from each follower, as if all were stored. */
  function ackAll(node: RawNode, messages: readonly Message[]): void {
    const term = node.basicStatus().term;
    for (const m of messages) {
      if (m.type === "append") node.step({ type: "append-response", from: m.to, to: 1, term, success: true, index: m.prevLogIndex + m.entries.length, hintIndex: 0, hintTerm: 0 });
    }
  }

  test("the next Ready goes on after entries handed to apply, but a membership change counts only once its apply is confirmed", () => {
    const node = committedLeader(3);
    const change = node.proposeConfChange(new TextEncoder().encode("add-learner 4"));
    // Saved and sent; then the followers' acks commit it.
    let ready = node.ready();
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    node.advance(ready);
    ackAll(node, ready.messages);
    ready = node.ready();
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    expect(ready.committedEntries.map((e) => e.index)).toEqual([change]);
    node.advance(ready, true, true);
    // Handed over, not confirmed: not handed again, and another change is refused.
    const write = node.propose([new TextEncoder().encode("w")]);
    ready = node.ready();
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    node.advance(ready);
    ackAll(node, ready.messages);
    ready = node.ready();
    expect(ready.committedEntries.map((e) => e.index)).toEqual([write]);
    node.advance(ready, true, true);
    expect(() => node.proposeConfChange(new TextEncoder().encode("add-learner 5"))).toThrow("conf_change_pending");
    // Confirmed in log order: the change applied, another may follow.
    node.confirmApplied(change);
    node.applyConfChange({ type: "add-learner", nodeId: 4 }, change);
    node.confirmApplied(write);
    expect(node.proposeConfChange(new TextEncoder().encode("add-learner 5"))).toBe(write + 1);
    // A confirmation past what was handed over is a bug in the driver.
    expect(() => node.confirmApplied(write + 1)).toThrow();
  });

  test("a membership change whose apply answers after a snapshot was restored does not touch the snapshot's configuration (thesis §5.1)", () => {
    const node = coreWith(2, 3);
    const change: Entry = { index: 1, term: 1, type: EntryType.ConfChange, data: new TextEncoder().encode("add-learner 5") };
    node.step({ type: "append", from: 1, to: 2, term: 1, prevLogIndex: 0, prevLogTerm: 0, entries: [change], commit: 1 });
    let ready = node.ready();
    disks.get(node)!.save(ready.hardState, ready.entries, ready.mustSync);
    // Applied once on this node's disk: the Ready after the one that saved it.
    node.advance(ready);
    ready = node.ready();
    expect(ready.committedEntries.map((e) => e.index)).toEqual([1]);
    node.advance(ready, true, true);
    // Its apply is under way when the leader streams an image whose configuration removed 3.
    node.step({ type: "snapshot", from: 1, to: 2, term: 1, snapshot: { index: 10, term: 1, voters: [1, 2] }, imageId: "image-10" });
    expect(node.basicStatus().voters).toEqual([1, 2]);
    // The old change answers now: the configuration as of index 10 stays.
    expect(node.applyConfChange({ type: "add-learner", nodeId: 5 }, 1)).toEqual({ voters: [1, 2], learners: [] });
    node.confirmApplied(1);
    expect(node.basicStatus().learners).toEqual([]);
    ready = node.ready();
    expect(ready.snapshot?.metadata.index).toBe(10);
  });
});

describe("a snapshot over a divergent log (thesis §5.1; the swarm never reaches this, found by a mutation review)", () => {
  test("a follower whose log holds the snapshot's index under another term restores the image; one that holds it under the same term only commits", () => {
    // Entries 1-2 of term 1 match the leader's; entry 3 of term 2 was a deposed leader's, never committed.
    const divergent = coreWith(2, 3, [entry(1, 1), entry(2, 1), entry(3, 2)], 2);
    divergent.step({ type: "snapshot", from: 1, to: 2, term: 3, snapshot: { index: 3, term: 3, voters: [1, 2, 3] }, imageId: "image-3" });
    const restored = divergent.ready();
    expect(restored.snapshot?.metadata).toMatchObject({ index: 3, term: 3 });
    expect(divergent.logTerm(3)).toBe(3);
    expect(restored.messages).toContainEqual(expect.objectContaining({ type: "append-response", success: true, index: 3 }));

    const matching = coreWith(2, 3, [entry(1, 1), entry(2, 1), entry(3, 3)], 3);
    matching.step({ type: "snapshot", from: 1, to: 2, term: 3, snapshot: { index: 3, term: 3, voters: [1, 2, 3] }, imageId: "image-3" });
    const committed = matching.ready();
    expect(committed.snapshot).toBeUndefined();
    expect(matching.basicStatus().commit).toBe(3);
  });
});

describe("check-quorum (thesis §6.2)", () => {
  test("a leader steps down after two election timeouts in a row without a majority, not one: a follower heard from in between keeps it leading", () => {
    const node = committedLeader(3);
    const term = node.basicStatus().term;
    const tickSilently = (ticks: number) => {
      for (let i = 0; i < ticks; i++) {
        node.tick();
        drain(node);
      }
    };
    // One whole check window with no answer (both followers' loops held, say): still leading.
    tickSilently(10 + 1);
    expect(node.basicStatus().role).toBe("leader");
    // Follower 2 answers a heartbeat: the next check finds a majority, and the count starts over.
    node.step({ type: "heartbeat-response", from: 2, to: 1, term, readContext: "" });
    tickSilently(10);
    expect(node.basicStatus().role).toBe("leader");
    tickSilently(10);
    expect(node.basicStatus().role).toBe("leader");
    // A second window in a row without a majority: it steps down, in the same term.
    tickSilently(10);
    expect(node.basicStatus().role).toBe("follower");
    expect(node.basicStatus().term).toBe(term);
  });
});

describe("a server that never campaigns (a learner)", () => {
  test("forgets a leader it has not heard from in two election timeouts, and follows it again at its next message (found in a black-box review: a learner removed while its image was on its way named its leader forever)", () => {
    // Node 4 is no voter of 1, 2, 3: it never campaigns.
    const storage = new MemoryStorage([1, 2, 3]);
    const node = new RawNode({ id: 4, storage, electionTicks: 10, heartbeatTicks: 1, prng: createPrng(4), applied: 0, ...defaultRaftLimits, checkQuorum: false });
    node.step({ type: "heartbeat", from: 1, to: 4, term: 1, commit: 0, readContext: "" });
    expect(node.basicStatus().leaderId).toBe(1);
    for (let tick = 0; tick < 19; tick++) node.tick();
    expect(node.basicStatus().leaderId).toBe(1); // within two election timeouts
    node.tick();
    expect(node.basicStatus().leaderId).toBe(0);
    expect(node.basicStatus().role).toBe("follower"); // and it still does not campaign
    for (let tick = 0; tick < 100; tick++) node.tick();
    expect(node.basicStatus().term).toBe(1);
    node.step({ type: "heartbeat", from: 1, to: 4, term: 1, commit: 0, readContext: "" });
    expect(node.basicStatus().leaderId).toBe(1);
  });
});
