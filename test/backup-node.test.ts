// Proves a node opens a backup image (KvNode.openSnapshot, behind GET /snapshot) only after a linearizable read: a follower cut off from the leader hands out no stale image (it is refused, or times out, as any read would), and once it hears from the leader its image holds every write acknowledged before the call.
import { expect, test } from "bun:test";
import { createMemoryCluster } from "./helpers/memory-cluster.ts";

const enc = (s: string) => new TextEncoder().encode(s);

test("a lagging follower's image waits for the leader's read index and then holds every acknowledged write", async () => {
  const cluster = createMemoryCluster({ node: { requestTimeoutMs: 5_000 } });
  await cluster.until(() => cluster.leader() !== undefined);
  const leader = cluster.leader()!;
  const leaderId = leader.status().id;
  const followerId = [1, 2, 3].find((id) => id !== leaderId)!;
  const otherId = [1, 2, 3].find((id) => id !== leaderId && id !== followerId)!;
  await cluster.drive(leader.put("early", enc("1")));

  cluster.network.cutBetween(followerId, leaderId);
  cluster.network.cutBetween(followerId, otherId);
  const { version } = await cluster.drive(leader.put("late", enc("2")));
  expect(cluster.node(followerId).status().appliedIndex).toBeLessThan(version);

  let imaged = false;
  const opening = cluster.node(followerId).openSnapshot();
  void opening.then(
    () => (imaged = true),
    () => undefined,
  );
  for (let tick = 0; tick < 50; tick++) {
    cluster.clock.advance(10);
    await cluster.settle();
  }
  expect(imaged).toBe(false); // no stale image while the follower cannot reach the leader

  // It ends as any read that cannot reach the leader does: refused once the follower knows no leader
  // (its election began: the read is asked again, of nobody), or a timeout; never a stale image.
  await expect(cluster.drive(opening)).rejects.toMatchObject({ code: expect.stringMatching(/^(no_leader|timeout)$/) });

  cluster.network.heal();
  await cluster.until(() => cluster.node(followerId).status().leaderId !== 0);
  const image = await cluster.drive(cluster.node(followerId).openSnapshot());
  try {
    expect(image.metadata.index).toBeGreaterThanOrEqual(version);
    const keys: string[] = [];
    for (let rows = image.next(1 << 20); rows.length > 0; rows = image.next(1 << 20)) keys.push(...rows.map((row) => row.key));
    expect(keys).toContain("early");
    expect(keys).toContain("late");
  } finally {
    image.close();
  }
});
