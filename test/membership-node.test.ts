// Proves membership changes through the node loop (KvNode) over the in-memory twins: a node added as
// a learner catches up, is promoted by the leader on its own and then counts in the quorum; a
// follower is removed; removing the leader hands leadership over first; the configuration survives a
// restart from storage; and only one change is in flight at a time (thesis §4.1).
import { describe, expect, test } from "bun:test";
import { decodeMembershipChange } from "../src/kv/command.ts";
import type { Membership } from "../src/kv/membership.ts";
import { type MembershipHost, NodeMembership, sameUrl } from "../src/node/membership.ts";
import type { RawNode } from "../src/raft/raw-node.ts";
import type { KvStorage } from "../src/storage/kv-storage.ts";
import { KvError } from "../src/lib/kv-error.ts";
import { createMemoryKvStorage, type MemoryKvStorage } from "../src/storage/memory-storage.ts";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

function createCluster() {
  return createMemoryCluster({ node: { requestTimeoutMs: 2_000 } });
}

type Cluster = ReturnType<typeof createCluster>;

/** Adds node `id` as --join does: ask the leader, then start it on the configuration the answer gave. */
async function join(cluster: Cluster, id: number) {
  const leader = cluster.leader()!;
  const view = await cluster.drive(leader.addMember(id, `mem://peer-${id}`));
  expect(view.members.find((m) => m.id === id)?.role).toBe("learner");
  const storage = createMemoryKvStorage();
  storage.bootstrapJoined(
    {
      voters: view.members.filter((m) => m.role === "voter").map((m) => m.id),
      learners: view.members.filter((m) => m.role === "learner").map((m) => m.id),
      addresses: view.members.map((m) => ({ id: m.id, peerUrl: m.peerUrl })),
    },
    view.configIndex,
  );
  return cluster.startNode(id, new Map([[id, `mem://peer-${id}`]]), storage);
}

test("a joined learner catches up, is promoted once caught up, and counts in the quorum", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  await cluster.drive(leader.put("before", enc("1")));
  const newcomer = await join(cluster, 4);
  await cluster.until(() => leader.members().members.find((m) => m.id === 4)?.role === "voter");
  await cluster.until(() => newcomer.status().appliedIndex === leader.status().appliedIndex);
  expect((await newcomer.get("before", "stale"))?.value).toEqual(enc("1"));
  expect(newcomer.members().members.map((m) => [m.id, m.role])).toEqual([
    [1, "voter"],
    [2, "voter"],
    [3, "voter"],
    [4, "voter"],
  ]);
  // Quorum of 4 is 3: with one original follower down, the leader needs node 4's ack to commit.
  const follower = [1, 2, 3].find((id) => id !== leader.status().id)!;
  for (const id of [1, 2, 3, 4]) if (id !== follower) cluster.network.cutBetween(follower, id);
  const { version } = await cluster.drive(leader.put("after", enc("2")));
  await cluster.until(() => newcomer.status().appliedIndex >= version);
  // ... and with node 4 cut off too, nothing commits (2 of 4).
  for (const id of [1, 2, 3]) cluster.network.cutBetween(4, id);
  await expect(cluster.drive(leader.put("stuck", enc("3")), 2_000)).rejects.toBeInstanceOf(KvError);
  expect(cluster.fatal).toEqual([]);
});

test("a leader deposed without knowing it (paused while another was elected and added a member) answers no not_found for that member: it first confirms it leads (swarm seed 47: the operator took such an answer for the removal done)", async () => {
  const cluster = createCluster();
  const old = await cluster.steadyLeader();
  const oldId = old.status().id;
  cluster.pause(oldId);
  const others = () => [1, 2, 3].filter((id) => id !== oldId).map((id) => cluster.node(id));
  await cluster.until(() => others().some((node) => node.status().role === "leader"));
  const newLeader = others().find((node) => node.status().role === "leader")!;
  await cluster.until(() => (newLeader as unknown as { raw: RawNode }).raw.votersHeardRecently() !== undefined);
  await cluster.drive(newLeader.addMember(9, "mem://peer-9"));
  cluster.resume(oldId);
  // It still takes itself for the leader, with a configuration without node 9.
  expect([old.status().role, old.members().members.some((member) => member.id === 9)]).toEqual(["leader", false]);
  const answers = await Promise.all([old.removeMember(9), old.promoteMember(9)].map((call) => cluster.drive(call).then(() => "done", (error: KvError) => error.code)));
  for (const code of answers) expect(["not_leader", "no_leader", "unavailable"]).toContain(code);
  // A change it goes ahead with is the log's to decide, and a deposed leader's never commits.
  const adding = await cluster.drive(old.addMember(10, "mem://peer-10")).then(() => "done", (error: KvError) => error.code);
  expect(["not_leader", "no_leader", "unavailable", "timeout", "proposal_dropped"]).toContain(adding);
  expect(newLeader.members().members.map((member) => member.id)).toEqual([1, 2, 3, 9]);
  expect(cluster.fatal).toEqual([]);
});

test("a removed follower leaves the configuration; a second change waits for the first", async () => {
  const cluster = createCluster();
  const leader = await cluster.steadyLeader();
  const follower = [1, 2, 3].find((id) => id !== leader.status().id)!;
  const first = leader.removeMember(follower);
  await expect(leader.addMember(9, "mem://peer-9")).rejects.toMatchObject({ code: "conf_change_pending" });
  const view = await cluster.drive(first);
  expect(view.members.map((m) => m.id)).not.toContain(follower);
  // Two voters remain: both must ack, and they do.
  await cluster.drive(leader.put("k", enc("v")));
  await expect(cluster.drive(leader.addMember(leader.status().id, "mem://x"))).rejects.toMatchObject({ code: "member_exists" });
  expect(cluster.fatal).toEqual([]);
});

test("a leadership transfer waits until a membership change applies: it could go to the voter being removed (found in a code review)", async () => {
  const cluster = createCluster();
  const leader = await cluster.steadyLeader();
  const [removed, rest] = [1, 2, 3].filter((id) => id !== leader.status().id) as [number, number];
  const removal = leader.removeMember(removed);
  // Proposed, not yet committed: before the fix the transfer went ahead, the node being removed won,
  // applied its own removal and stepped down, and another election followed.
  await expect(cluster.drive(leader.transferLeadership(removed), 2_000)).rejects.toMatchObject({ code: "unavailable" });
  await expect(cluster.drive(leader.transferLeadership(undefined), 2_000)).rejects.toMatchObject({ code: "unavailable" });
  await cluster.drive(removal);
  const moved = await cluster.drive(leader.transferLeadership(undefined));
  expect(moved.leaderId).toBe(rest);
  expect(cluster.fatal).toEqual([]);
});

test("a leader just elected hands leadership on at once when the entries it inherited hold no membership change (found when CI ran the check above: it refused until it had applied them)", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  for (let round = 0; round < 4; round++) {
    const leader = cluster.leader()!;
    for (let i = 0; i < 5; i++) void leader.put(`k${round}-${i}`, enc("v")).catch(() => undefined);
    const moved = await cluster.drive(leader.transferLeadership(undefined));
    const next = cluster.node(moved.leaderId);
    const again = await cluster.drive(next.transferLeadership(undefined));
    expect(again.leaderId).not.toBe(moved.leaderId);
  }
  expect(cluster.fatal).toEqual([]);
});

test("removing a voter is refused when the voters left would have no majority that answers; removing the one down is not (found in a code review)", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  const leaderId = leader.status().id;
  const [down, up] = [1, 2, 3].filter((id) => id !== leaderId) as [number, number];
  cluster.stop(down);
  // A whole check-quorum round led, the stopped one silent through it: the leader knows it is down.
  const raw = (leader as unknown as { raw: RawNode }).raw;
  await cluster.until(() => raw.votersHeardRecently()?.includes(down) === false, 1_000);
  expect(raw.votersHeardRecently()).toContain(up);
  const refused = await cluster.drive(leader.removeMember(up)).catch((error: unknown) => error);
  expect(refused).toMatchObject({ code: "unhealthy_cluster" });
  expect((refused as Error).message).toContain(`bring back node ${down}, or remove it, first`);
  expect(leader.members().members.map((m) => m.id)).toContain(up);
  await cluster.drive(leader.put("still", enc("commits")));
  const view = await cluster.drive(leader.removeMember(down));
  expect(view.members.map((m) => m.id).sort()).toEqual([leaderId, up].sort());
  expect(cluster.fatal).toEqual([]);
});

test("a leader that has not yet led through a check-quorum round asks for a retry of a voter's removal, rather than let any leader change carry a refused one through (found in a review of the check)", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const first = cluster.leader()!;
  const [down, up] = [1, 2, 3].filter((id) => id !== first.status().id) as [number, number];
  cluster.stop(down);
  await cluster.until(() => (first as unknown as { raw: RawNode }).raw.votersHeardRecently()?.includes(down) === false, 1_000);
  await expect(cluster.drive(first.removeMember(first.status().id))).rejects.toMatchObject({ code: "unhealthy_cluster" });
  // Leadership moves to the other live voter: before, the new leader accepted the removal of the old
  // one at once, and left voters {up, down}: nothing committed again.
  await cluster.drive(first.transferLeadership(up));
  const next = cluster.node(up);
  const refused = await cluster.drive(next.removeMember(first.status().id)).catch((error: unknown) => error);
  expect(refused).toMatchObject({ code: "unavailable", details: { retryAfterS: 1 } });
  await cluster.until(() => (next as unknown as { raw: RawNode }).raw.votersHeardRecently() !== undefined, 1_000);
  await expect(cluster.drive(next.removeMember(first.status().id))).rejects.toMatchObject({ code: "unhealthy_cluster" });
  expect(next.members().members.map((m) => m.id).sort()).toEqual([1, 2, 3]);
  expect(cluster.fatal).toEqual([]);
});

test("a member is not added at a peer URL another member has: its calls would reach that member (found by an operator's review)", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  const other = [1, 2, 3].find((id) => id !== leader.status().id)!;
  const taken = leader.members().members.find((m) => m.id === other)!.peerUrl;
  const refused = await leader.addMember(9, taken).catch((error: unknown) => error);
  expect(refused).toMatchObject({ code: "bad_request" });
  expect((refused as Error).message).toContain(`node ${other}`);
  expect(leader.members().members.map((m) => m.id)).not.toContain(9);
  // A path or a query does not make it another peer (found in review: those were accepted).
  for (const variant of [`${taken}/x`, `${taken}?a`, taken.toUpperCase().replace("MEM://", "mem://")]) {
    expect([variant, await leader.addMember(9, variant).then(() => "added", (error: KvError) => error.code)]).toEqual([variant, "bad_request"]);
  }
  // Another URL is fine.
  expect((await cluster.drive(leader.addMember(9, "mem://peer-9"))).members.map((m) => m.id)).toContain(9);
});

test("promote refuses a learner that has not caught up (nothing runs at its URL): a dead voter would only make majorities harder (found by an operator's review)", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  for (let i = 0; i < 5; i++) await cluster.drive(leader.put(`k${i}`, enc("v")));
  await cluster.drive(leader.addMember(9, "mem://peer-9"));
  const refused = await leader.promoteMember(9).catch((error: unknown) => error);
  expect(refused).toMatchObject({ code: "learner_not_ready" });
  expect((refused as Error).message).toContain("node 9 has 0 of the");
  expect(leader.members().members.find((m) => m.id === 9)?.role).toBe("learner");
});

test("removing the leader hands leadership over first; the new leader removes it; the old one stops serving", async () => {
  const cluster = createCluster();
  const old = await cluster.steadyLeader();
  const oldId = old.status().id;
  const refusal = await cluster.drive(old.removeMember(oldId)).catch((error: unknown) => error);
  expect(refusal).toMatchObject({ code: "not_leader" });
  await cluster.until(() => cluster.leader() !== undefined && cluster.leader() !== old);
  const next = await cluster.steadyLeader();
  // A new leader takes no change before it applied all its log holds (it may hide one): 409 till then.
  await cluster.until(() => next.status().appliedIndex === next.status().lastLogIndex);
  const view = await cluster.drive(next.removeMember(oldId));
  expect(view.members.map((m) => m.id).sort()).toEqual([1, 2, 3].filter((id) => id !== oldId));
  await cluster.drive(next.put("k", enc("v")));
  // The old leader may never hear that the removal committed (thesis §4.2.3); it is no leader either way.
  expect(old.status().role).not.toBe("leader");
  expect(cluster.fatal).toEqual([]);
});

test("the configuration survives a restart from storage, over what --cluster says", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const newcomer = await join(cluster, 4);
  await cluster.until(() => cluster.leader()!.members().members.find((m) => m.id === 4)?.role === "voter");
  await cluster.until(() => newcomer.status().appliedIndex === cluster.leader()!.status().appliedIndex);
  const storage = cluster.storages.get(4)!.clone();
  cluster.stop(4);
  const restarted = cluster.startNode(4, new Map([[4, "mem://peer-4"]]), storage);
  expect(restarted.members().members.map((m) => `${m.id}:${m.role}:${m.peerUrl}`)).toEqual([
    "1:voter:mem://peer-1",
    "2:voter:mem://peer-2",
    "3:voter:mem://peer-3",
    "4:voter:mem://peer-4",
  ]);
  // An original node restarted with the old three-node --cluster keeps the recorded four.
  const original = [1, 2, 3].find((id) => id !== cluster.leader()!.status().id)!;
  const originalStorage = cluster.storages.get(original)!.clone();
  cluster.stop(original);
  const back = cluster.startNode(original, cluster.peers, originalStorage);
  expect(back.members().members.map((m) => m.id)).toEqual([1, 2, 3, 4]);
  await cluster.drive(cluster.leader()!.put("k", enc("v")));
  await cluster.until(() => dec(cluster.storages.get(4)!.get("k")?.value ?? new Uint8Array()) === "v");
  expect(cluster.fatal).toEqual([]);
});

test("a follower asked to add, promote or remove a node answers not_leader, not from its own configuration, which may be behind (swarm seed 1330)", async () => {
  const cluster = createCluster();
  await cluster.until(() => cluster.leader() !== undefined);
  const leaderId = cluster.leader()!.status().id;
  const follower = cluster.node([1, 2, 3].find((id) => id !== leaderId)!);
  // Node `leaderId` is in every configuration: a follower judging by its own would say member_exists.
  await expect(follower.addMember(leaderId, `mem://peer-${leaderId}`)).rejects.toMatchObject({ code: "not_leader" });
  await expect(follower.promoteMember(leaderId)).rejects.toMatchObject({ code: "not_leader" });
  // And an id it does not know of may still be one the leader has added.
  await expect(follower.removeMember(9)).rejects.toMatchObject({ code: "not_leader" });
});

test("two peer URLs are one address when they differ only in case, path, query, or an IPv4 address written as IPv6 (found in a black-box review: [::ffff:127.0.0.1] was another peer)", () => {
  for (const [a, b] of [
    ["http://127.0.0.1:7401", "http://[::ffff:127.0.0.1]:7401"],
    ["http://127.0.0.1:7401", "http://[::FFFF:7f00:1]:7401/"],
    ["https://Kv-1.example:5001", "https://kv-1.example:5001/x?y"],
  ]) expect([a, b, sameUrl(a as string, b as string)]).toEqual([a, b, true]);
  for (const [a, b] of [
    ["http://127.0.0.1:7401", "http://[::ffff:127.0.0.2]:7401"],
    ["http://127.0.0.1:7401", "http://127.0.0.1:7402"],
    ["http://127.0.0.1:7401", "https://127.0.0.1:7401"],
    ["http://[::1]:7401", "http://127.0.0.1:7401"],
  ]) expect([a, b, sameUrl(a as string, b as string)]).toEqual([a, b, false]);
});

describe("a node's own membership, outside the log's replay (fake host)", () => {
  function hostWith(initial: Membership, raw: Partial<RawNode>) {
    let recorded = initial;
    const logged: string[] = [];
    const host: MembershipHost = {
      id: 3,
      peers: new Map(),
      peerDirectory: undefined,
      storage: { membership: () => recorded } as unknown as KvStorage,
      log: (event) => logged.push(event),
      raw: () => raw as RawNode,
      refuseUnlessRunning: () => undefined,
      notLeader: () => new KvError("not_leader", "not the leader"),
      confirmLeadership: async () => undefined,
      transferLeadership: async () => ({ leaderId: 1 }),
      httpUrlOf: () => undefined,
      deadline: () => Number.POSITIVE_INFINITY,
      scheduleTurn: () => undefined,
      stopped: () => false,
      tickMs: 10,
      removed: () => undefined,
    };
    return { host, logged, record: (membership: Membership) => (recorded = membership) };
  }
  const addresses = [1, 2, 3].map((id) => ({ id, peerUrl: `mem://peer-${id}` }));

  test("an installed image decides whether this node was removed: one listing it makes it a member again, one without it removes it (found by a code review)", () => {
    const raw = { applyConfChange: () => undefined, basicStatus: () => ({ role: "follower", voters: [1, 2], learners: [] }) as never } as unknown as Partial<RawNode>;
    const { host, record } = hostWith({ voters: [1, 2, 3], learners: [], addresses, changedIndex: 4 }, raw);
    const membership = new NodeMembership(host);
    expect(membership.removed()).toBe(false);
    // A node joining again under its id replays its old removal from the log...
    record({ voters: [1, 2], learners: [], addresses: addresses.slice(0, 2), changedIndex: 7 });
    membership.changeApplied({ kind: "conf-change", index: 7, change: { type: "remove", nodeId: 3 } } as never, 2);
    expect(membership.removed()).toBe(true);
    // ... then catches up by an image taken after it was added again: its addition never applies here.
    record({ voters: [1, 2], learners: [3], addresses, changedIndex: 40 });
    membership.snapshotInstalled();
    expect(membership.removed()).toBe(false);
    // An image whose configuration leaves it out: it was removed.
    record({ voters: [1, 2], learners: [], addresses: addresses.slice(0, 2), changedIndex: 90 });
    membership.snapshotInstalled();
    expect(membership.removed()).toBe(true);
  });

  test("a removed process that applies its id's addition at another address (another process) stays removed; one at its own address is a member again (found in a black-box review: an old process took a new one's addition for its own)", () => {
    const raw = { applyConfChange: () => undefined, basicStatus: () => ({ role: "follower", voters: [1, 2], learners: [] }) as never } as unknown as Partial<RawNode>;
    const { host, logged, record } = hostWith({ voters: [1, 2, 3], learners: [], addresses, changedIndex: 4 }, raw);
    const membership = new NodeMembership({ ...host, peers: new Map([[3, "mem://peer-3"]]) });
    record({ voters: [1, 2], learners: [], addresses: addresses.slice(0, 2), changedIndex: 7 });
    membership.changeApplied({ kind: "conf-change", index: 7, change: { type: "remove", nodeId: 3 } } as never, 2);
    expect(membership.removed()).toBe(true);
    // Its id added again for a process elsewhere.
    const elsewhere = { id: 3, peerUrl: "mem://peer-3-new", addedIndex: 9 };
    record({ voters: [1, 2], learners: [3], addresses: [...addresses.slice(0, 2), elsewhere], changedIndex: 9 });
    membership.changeApplied({ kind: "conf-change", index: 9, change: { type: "add-learner", nodeId: 3, peerUrl: elsewhere.peerUrl } } as never, 2);
    expect(membership.removed()).toBe(true);
    expect(logged.filter((event) => event === "member again")).toEqual([]);
    // Removed again, then added again at this process's own address: a member again.
    record({ voters: [1, 2], learners: [], addresses: addresses.slice(0, 2), changedIndex: 11 });
    membership.changeApplied({ kind: "conf-change", index: 11, change: { type: "remove", nodeId: 3 } } as never, 2);
    record({ voters: [1, 2], learners: [3], addresses: [...addresses.slice(0, 2), { id: 3, peerUrl: "mem://peer-3", addedIndex: 13 }], changedIndex: 13 });
    membership.changeApplied({ kind: "conf-change", index: 13, change: { type: "add-learner", nodeId: 3, peerUrl: "mem://peer-3" } } as never, 2);
    expect(membership.removed()).toBe(false);
  });

  test("a --cluster entry that differs from the member's recorded address is used, and said once per recorded address (a member re-added elsewhere was silently reached at its old one: found in a black-box review)", () => {
    const raw = { basicStatus: () => ({ role: "follower", voters: [1, 2, 3], learners: [] }) as never } as unknown as Partial<RawNode>;
    const moved = addresses.map((address) => (address.id === 2 ? { ...address, peerUrl: "mem://peer-2-new" } : address));
    const { host, logged, record } = hostWith({ voters: [1, 2, 3], learners: [], addresses: moved, changedIndex: 9 }, raw);
    const directory = new Map<number, string>();
    const membership = new NodeMembership({ ...host, peers: new Map([[1, "mem://peer-1"], [2, "mem://peer-2"], [3, "mem://peer-3"]]), peerDirectory: directory });
    membership.refreshAddresses();
    expect(directory.get(2)).toBe("mem://peer-2");
    expect(logged).toEqual(["peer address from --cluster"]);
    membership.refreshAddresses();
    expect(logged).toHaveLength(1);
    // Moved again: said again.
    record({ voters: [1, 2, 3], learners: [], addresses: addresses.map((address) => (address.id === 2 ? { ...address, peerUrl: "mem://peer-2-newer" } : address)), changedIndex: 12 });
    membership.refreshAddresses();
    expect(logged).toHaveLength(2);
  });

  test("with a membership change in the log not yet applied, an operator's removal or promotion of a node the configuration lacks waits (conf_change_pending): the configuration is about to change, so 'not a member' could name one being added", async () => {
    const proposed: Uint8Array[] = [];
    const raw = {
      basicStatus: () => ({ role: "leader", voters: [1, 2], learners: [], commit: 10, term: 2, leaderId: 1 }) as never,
      members: () => [1, 2],
      isVoter: (id: number) => id <= 2,
      confChangePending: () => true,
      proposeConfChange: (data: Uint8Array) => proposed.push(data) + 10,
    };
    const { host } = hostWith({ voters: [1, 2], learners: [], addresses, changedIndex: 5 }, raw as unknown as Partial<RawNode>);
    const membership = new NodeMembership({ ...host, id: 1 });
    for (const call of [() => membership.remove(9), () => membership.promote(9)]) {
      await expect(call()).rejects.toMatchObject({ code: "conf_change_pending" });
    }
    expect(proposed).toEqual([]);
  });

  test("the leader promotes only a caught-up learner it has heard from lately: one that caught up and then went down stays a learner, and an operator's promote is refused (found by a code review)", async () => {
    let heard = false;
    const proposed: Uint8Array[] = [];
    const raw = {
      basicStatus: () => ({ role: "leader", voters: [1, 2], learners: [3], commit: 10, term: 2, leaderId: 1 }) as never,
      matchIndexOf: () => 10,
      heardRecently: () => heard,
      confChangePending: () => false,
      proposeConfChange: (data: Uint8Array) => proposed.push(data) + 10,
    };
    const { host } = hostWith({ voters: [1, 2], learners: [3], addresses, changedIndex: 5 }, raw as unknown as Partial<RawNode>);
    const membership = new NodeMembership({ ...host, id: 1 });
    membership.maybePromoteLearner();
    expect(proposed).toEqual([]);
    // Asked by an operator: refused as not ready, saying why.
    await expect(membership.promote(3)).rejects.toMatchObject({ code: "learner_not_ready", message: expect.stringContaining("has not answered this leader lately") });
    expect(proposed).toEqual([]);
    heard = true;
    membership.maybePromoteLearner();
    expect(proposed.map((data) => decodeMembershipChange(data))).toEqual([{ type: "promote", nodeId: 3 }]);
  });
});
