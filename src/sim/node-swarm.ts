import { fnv1a } from "../lib/fnv1a.ts";
import { createPrng, type Prng } from "../lib/prng.ts";
import type { NodeId } from "../raft/types.ts";
import { NodeSim, SimViolation } from "./node-sim.ts";
import { SeenVersions } from "../chaos/history.ts";
import { balanceOf, bankAccounts, BANK_PREFIX } from "../chaos/bank.ts";
import { SimBank } from "./sim-bank.ts";
import { SimWatchers } from "./sim-watch.ts";

/** What one run of real node loops did: proof the faults and paths were exercised. */
export interface NodeSwarmResult {
  readonly seed: number;
  readonly nodeCount: number;
  readonly simulatedMs: number;
  readonly operations: number;
  readonly acknowledgedWrites: number;
  /** Deletes by prefix answered ok. */
  readonly prefixDeletes: number;
  readonly crashes: number;
  readonly powerLosses: number;
  readonly stalls: number;
  readonly diskFullEpisodes: number;
  readonly partitions: number;
  readonly transfers: number;
  /** Servers that joined with a new id, removed ids that joined again on a wiped disk, members removed (leaders among them). */
  readonly joins: number;
  readonly rejoins: number;
  readonly removals: number;
  readonly leaderRemovals: number;
  /** Servers that ever ran (the first voters and every one that joined). */
  readonly serversEver: number;
  /** Snapshots installed from a streamed image (followers caught up past a compaction). */
  readonly snapshotsInstalled: number;
  /** Applies and installs answered later by a disk's storage thread (`storageThreadMsMax`), and of those the installs. */
  readonly storageThreadAnswers: number;
  readonly storageThreadInstalls: number;
  /** Writes a storage thread took while the disk was full, and retried until space returned. */
  readonly storageThreadBlockedWrites: number;
  /** Power losses after which a disk's state machine was ahead of its log's durable image (see SimDisk.afterCrash). */
  readonly stateMachineAhead: number;
  /** Power losses that kept some of the log's saves written after its last finished fsync (SimDisk.afterCrash). */
  readonly unsyncedSavesKept: number;
  /** Crashes without power loss that lost requests the disk's storage thread had not run: saves, compactions, applies, an install (SimDisk.afterCrash). */
  readonly threadWorkLost: number;
  /** Answers to peer calls that carried the receiver's replies (as the real transport's do). */
  readonly repliesCarried: number;
  /** Messages to a member whose address the sender had not learned, with no call of its to ride (dropped, as the real transport drops them). */
  readonly unaddressedDropped: number;
  /** The bank workload's transfers answered as applied, and its reads answered (src/chaos/bank.ts). */
  readonly bankTransfers: number;
  readonly bankReads: number;
  /** Watchers checked against the clients' writes (src/sim/sim-watch.ts), the streams they opened (resumes included), the change events they received, watchers ended by resumes every node refused as compacted, and runs whose watchers were judged only from where a member's history began. */
  readonly watchers: number;
  readonly watchStreams: number;
  readonly watchEvents: number;
  readonly watchCompactedResumes: number;
  readonly watchReferenceUnavailable: number;
  /** Streams ended because their client lagged behind: slow_watcher, and compacted. */
  readonly watchSlowWatcherEnds: number;
  readonly watchCompactedEnds: number;
  /** Compaction steps on every disk (one compaction of more entries than a step takes several). */
  readonly compactSteps: number;
  /** Peer calls a receiver's guard refused from a caller removed from the configuration it applied (the caller is told so). */
  readonly peerCallsRefusedRemoved: number;
  /** Of those, the refusals that reached the caller's node, which then takes itself for removed. */
  readonly removedToldByPeer: number;
  /**
   * Members removed while cut off whose process ran on while their id was added again for a new
   * process on an empty disk (NodeSim.detach), and peer calls refused as from such an older process.
   */
  readonly staleProcesses: number;
  readonly peerCallsRefusedStaleMember: number;
  /** Calls refused as meant for an older process of the receiver's id (peer-call-guard.ts `refuseStaleRecipient`). */
  readonly peerCallsRefusedStaleRecipient: number;
  /** Client calls sent to such older processes (their answers judged with the rest). */
  readonly olderProcessCalls: number;
  /** Such older processes stalled, killed, and partitions that put them on a side of their own (NodeSim.runningGhosts). */
  readonly olderProcessStalls: number;
  readonly olderProcessCrashes: number;
  readonly olderProcessPartitions: number;
  /** Writes sent again under their idempotency key while their outcome was unknown, and applies (on any server) a session answered. */
  readonly retries: number;
  readonly sessionAnswers: number;
  /** Compare-and-set writes refused `version_mismatch`: each is judged as a read of the version its answer named (src/chaos/linearizability.ts `refusalsAsReads`). */
  readonly refusedCompareAndSets: number;
  /** Keys lease clients put attached to a lease, judged against the converged state (NodeSim.checkLeaseKeys). */
  readonly leaseKeysJudged: number;
  /** Steps of a server's wall clock (see NodeSim.jumpWallClock). */
  readonly wallClockJumps: number;
  /** Leases granted to the lease clients, keepalives answered, leases revoked, and of their leases those whose expiry applied (judged by NodeSim.checkLeases). */
  readonly leasesGranted: number;
  readonly leaseKeepalives: number;
  readonly leasesRevoked: number;
  readonly leasesExpired: number;
  /** Simulator events run (timers, deliveries, fsyncs, client calls). */
  readonly events: number;
  /**
   * FNV-1a of the trace (every event's time and every node's role, term and indexes after it), the
   * clients' history and the final state: two runs of one seed must give the same.
   */
  readonly digest: string;
}

/**
 * Splits `ids` into two non-empty sides at random. Draws exactly `ids.length` numbers from `prng`
 * (a Fisher-Yates shuffle, then the cut), whatever the engine, so a seed replays bit for bit.
 */
export function drawPartition(prng: Prng, ids: readonly NodeId[]): [NodeId[], NodeId[]] {
  const shuffled = prng.shuffle(ids);
  const cut = prng.intInclusive(1, ids.length - 1);
  return [shuffled.slice(0, cut), shuffled.slice(cut)];
}

/** Members a configuration holds at most in the swarm, and servers a run creates at most. */
const membersMax = 7;
const serversMax = 10;

/** The line that replays a seed (with the run's length, when it was not the seed's own). */
export function nodeSwarmReplay(seed: number, durationMs?: number): string {
  return `${durationMs === undefined ? "" : `KV_SWARM_MS=${durationMs} `}KV_NODE_SWARM_SEED=${seed} bun test test/node-swarm.test.ts`;
}

/** Ways into a run, for tests of the runner itself. */
export interface NodeSwarmHooks {
  /** Called once the simulation is set up, before it runs (e.g. to schedule a failure). */
  readonly onStart?: (sim: NodeSim) => void;
}

/**
 * One randomized run of the real node loop (`KvNode`) in the manner of TigerBeetle's VOPR: the fault
 * settings and the cluster's size (3, 5 or 7) are drawn from the seed (a "swarm"); clients read and
 * write while the nemesis crashes processes (half of them with power loss), stalls them for up to
 * 500 ms (the leader also while cut off), fills their disks, partitions the network and hands
 * leadership over, and an operator changes the membership through the node API; then everything
 * heals and the members must converge, and the clients' answers must be linearizable. `durationMs` is simulated time (default:
 * drawn; `KV_SWARM_MS` runs thousands of election timeouts). Throws with the seed and its replay line.
 */
function storageThread(msMax: number | undefined): { storageThreadMsMax?: number } {
  return msMax === undefined ? {} : { storageThreadMsMax: msMax };
}

export async function runNodeSwarm(seed: number, durationMs?: number, hooks: NodeSwarmHooks = {}): Promise<NodeSwarmResult> {
  const prng = createPrng(seed);
  // Most seeds run 3 nodes (cheapest); one in eight 5, one in eight 7 (more majorities to split,
  // more peers per leader), so 500 seeds take about as long as when a quarter ran 5 and none 7.
  const nodeCount = prng.pick([3, 3, 3, 3, 3, 3, 5, 7]);
  const electionTicks = prng.intInclusive(6, 15);
  const tickMs = 10;
  const sim = new NodeSim({
    seed,
    nodeCount,
    tickMs,
    electionTicks,
    heartbeatTicks: prng.intInclusive(1, Math.max(1, Math.floor(electionTicks / 3))),
    requestTimeoutMs: prng.pick([300, 1_000, 3_000]),
    snapshotEntries: prng.pick([20, 50, 10_000]),
    snapshotCatchUpEntries: 5,
    // A compaction of more entries than a step carries on over ticks, and may meet a full disk
    // midway: with the default step (512) every compaction here took one (found in a review).
    compactStepEntries: prng.pick([1, 4, 512]),
    // A history of a few dozen changes turns over while streams lag behind it, and a buffer of a few
    // changes ends a stream its client has not read in time (slow_watcher): with the defaults no
    // seed reached either (found in a review). Streams resume from their last version either way.
    watch: prng.pick([{}, {}, { historyEntriesMax: 48 }, { bufferEventsMax: 3 }]),
    clockDriftMax: prng.pick([0, 0.05, 0.1]),
    fsyncMsMin: 0,
    fsyncMsMax: prng.pick([1, 5, 30]),
    // Half the runs apply on a storage thread (as the server does), answering after up to 2 or 20 ms.
    ...storageThread(prng.pick([undefined, undefined, 2, 20])),
    network: {
      lossRate: prng.pick([0, 0, 0.02, 0.1]),
      delayMsMin: 0,
      delayMsMax: prng.pick([1, 5, 20]),
    },
  });
  // A 7-node run costs about three 3-node runs of the same length: it runs 2-4 s, not 2-6 s
  // (`KV_SWARM_MS` runs every size as long as it says).
  const runMs = durationMs ?? prng.intInclusive(2_000, nodeCount === 7 ? 4_000 : 6_000);
  const crashRate = prng.pick([0, 0.002, 0.01]);
  const stallRate = prng.pick([0, 0.002, 0.01]);
  const diskFullRate = prng.pick([0, 0, 0.002]);
  const partitionRate = prng.pick([0, 0.002, 0.01]);
  const transferRate = prng.pick([0, 0.001]);
  const pauseLeaderRate = prng.pick([0, 0.002, 0.005]);
  const isolateLeaderRate = prng.pick([0, 0.002, 0.005]);
  const membershipRate = prng.pick([0, 0, 0.003, 0.01]);
  const wallJumpRate = prng.pick([0, 0, 0.002]);
  const clientCount = prng.intInclusive(2, 5);
  const keys = Array.from({ length: prng.intInclusive(2, 5) }, (_, i) => `k${i}`);
  // Every server that exists (the first voters, then those that joined), removed ones too: clients
  // still call them and the nemesis still hits them.
  const ids = () => [...sim.servers.keys()];
  // What clients call: those, and the older processes of re-added ids (NodeSim.detach), which a
  // client that knew their address still reaches: they must answer it nothing stale.
  const clientTargets = () => [...sim.servers.keys(), ...sim.ghosts.keys()];
  const faults = { diskFullEpisodes: 0, partitions: 0, transfers: 0 };

  // Clients: each waits for its answer, thinks a little, and goes again, to the leader it believes
  // in: the node that last answered it, as a real client keeps calling a node that answers (a
  // deposed leader that still believes it leads among them), or after a failure the leader now.
  // Before, every client went to the newest leader after each answer, and a deposed leader's reads
  // were almost never checked (found in a review: a lease three times too long went unnoticed).
  const client = (clientId: number) => {
    let leaderHint: NodeId | undefined;
    // Some of its writes of a key it has seen are compare-and-sets on it, as `kv chaos random`'s.
    const seen = new SeenVersions();
    const next = (): void => {
      if (sim.nowMs >= runMs) return;
      const target = leaderHint !== undefined && prng.chance(0.8) ? leaderHint : prng.pick(clientTargets());
      const roll = prng.next();
      const kind = roll < 0.5 ? "put" : roll < 0.9 ? "get" : "delete";
      const consistency = prng.chance(0.3) ? "lease" : "linearizable";
      const key = prng.pick(keys);
      const ifVersion = seen.ifVersionFor(kind, key, (p) => prng.chance(p));
      // Some deletes go by prefix: no other key starts with a key of the run (k0..k4), so each is a delete of the key.
      const byPrefix = kind === "delete" && ifVersion === undefined && prng.chance(0.3);
      // Half the writes carry an idempotency key and are sent again while their outcome is unknown
      // (as the client library does), to the leader as the client then finds it or any node.
      const retry = kind !== "get" && prng.chance(0.5) ? { attempts: prng.intInclusive(2, 4), target: () => sim.leader() ?? prng.pick(ids()), pauseMs: () => prng.intInclusive(0, 100), until: runMs } : undefined;
      void sim.callOperation(clientId, target, kind, key, { consistency, byPrefix, ...(ifVersion === undefined ? {} : { ifVersion }), ...(retry === undefined ? {} : { retry }) }).then((op) => {
        seen.note(op);
        leaderHint = op.outcome === "ok" ? target : sim.leader();
        sim.at(prng.intInclusive(0, 20), next);
      });
    };
    sim.at(prng.intInclusive(0, 50), next);
  };
  for (let c = 1; c <= clientCount; c++) client(c);

  // Bank clients (src/chaos/bank.ts), in most runs: each reads two accounts and moves some of the
  // first's balance to the second in one transaction conditional on both versions, or reads several
  // accounts at once (a read-only transaction, or a listing of all of them).
  const bank = new SimBank(sim, bankAccounts(prng.intInclusive(2, 4)), runMs);
  const bankClientCount = prng.pick([0, 1, 2, 3]);
  const bankClient = (clientId: number) => {
    let leaderHint: NodeId | undefined;
    const again = () => {
      leaderHint = sim.leader();
      sim.at(prng.intInclusive(0, 20), next);
    };
    const next = (): void => {
      if (sim.nowMs >= runMs) return;
      const target = leaderHint !== undefined && prng.chance(0.8) ? leaderHint : prng.pick(ids());
      const consistency = prng.chance(0.3) ? "lease" : "linearizable";
      if (prng.chance(0.3)) {
        // A lease read is a listing: a transaction of gets alone is always linearizable, so one drawn
        // as a lease read tested nothing of leases (found in review).
        const listing = prng.chance(0.5);
        void bank.read(clientId, target, listing || consistency === "lease" ? "list" : bank.accounts, consistency).then(again);
        return;
      }
      const [from, to] = prng.shuffle(bank.accounts) as [string, string];
      void bank.read(clientId, target, [from, to], "linearizable").then((seen) => {
        const [fromSeen, toSeen] = seen ?? [];
        const balance = fromSeen === undefined ? undefined : balanceOf(fromSeen);
        // The run may have ended while the read was out: no transfer starts after it (seed 1062's did).
        if (fromSeen === undefined || toSeen === undefined || balance === undefined || sim.nowMs >= runMs) return again();
        const amount = prng.intInclusive(0, Math.max(0, balance));
        void bank.transfer(clientId, sim.leader() ?? target, fromSeen, toSeen, amount, prng.chance(0.5)).then(again);
      });
    };
    sim.at(prng.intInclusive(0, 50), next);
  };
  for (let c = 1; c <= bankClientCount; c++) bankClient(clientCount + c);

  // Lease clients, in some runs: each is granted a lease, attaches a key or two to it, keeps it
  // alive a few times, then revokes it or lets it run out, and starts over. Their keys are apart
  // from the clients' (a lease's expiry deletes them without a client's delete); what is judged is
  // when leases end against the calls that kept them alive (NodeSim.checkLeases).
  const leaseClientCount = prng.pick([0, 0, 1, 2]);
  const leaseClient = (clientId: number) => {
    let round = 0;
    const target = () => sim.leader() ?? prng.pick(ids());
    const again = (): void => void sim.at(prng.intInclusive(0, 50), next);
    const keepAlive = (lease: number, ttlMs: number, left: number): void => {
      if (left === 0 || sim.nowMs >= runMs) {
        // No new request once the run is over (a lease still held then runs out while it heals).
        if (sim.nowMs < runMs && prng.chance(0.5)) void sim.leaseCall(target(), { op: "revoke", lease }).then(again);
        else sim.at(ttlMs, again); // let it run out
        return;
      }
      // Well within the TTL, or (now and then) past it: a lease may end while its holder is late.
      sim.at(prng.chance(0.9) ? prng.intInclusive(1, Math.floor(ttlMs / 3)) : prng.intInclusive(ttlMs, 2 * ttlMs), () => {
        void sim.leaseCall(target(), { op: "keepalive", lease }).then(() => keepAlive(lease, ttlMs, left - 1));
      });
    };
    const next = (): void => {
      if (sim.nowMs >= runMs) return;
      const ttlMs = prng.intInclusive(50, 1_500); // raised to the node's minimum (4 election timeouts)
      void sim.leaseCall(target(), { op: "grant", ttlMs }).then((lease) => {
        if (typeof lease !== "number") return again();
        const keys = Array.from({ length: prng.intInclusive(1, 2) }, (_, i) => `l${clientId}.${round}.${i}`);
        round++;
        void Promise.all(keys.map((key) => sim.leaseCall(target(), { op: "put", lease, key }))).then(() => keepAlive(lease, ttlMs, prng.intInclusive(0, 6)));
      });
    };
    sim.at(prng.intInclusive(0, 50), next);
  };
  for (let c = 1; c <= leaseClientCount; c++) leaseClient(clientCount + bankClientCount + c);

  // Watchers of the clients' keys (not the bank's: its transfers change two keys at a version), in
  // most runs, each resuming on another node when its stream ends (src/sim/sim-watch.ts).
  const watchers = new SimWatchers(sim, prng, "k");
  watchers.start(prng.pick([0, 1, 2, 3]), tickMs);

  // The nemesis: one draw per tick.
  const nemesis = (): void => {
    if (sim.nowMs >= runMs) return;
    const id = prng.pick(ids());
    if (prng.chance(crashRate)) {
      sim.crash(id, prng.chance(0.5));
      sim.at(prng.intInclusive(10, 1_000), () => sim.restart(id));
    }
    if (prng.chance(stallRate)) sim.stall(id, prng.intInclusive(1, 500));
    const ghosts = sim.runningGhosts();
    if (ghosts.length > 0) {
      // Older processes are stalled as often as nodes, and now and then die (nobody restarts them).
      const address = prng.pick(ghosts);
      if (prng.chance(stallRate)) sim.stallGhost(address, prng.intInclusive(1, 500));
      if (prng.chance(crashRate / 4)) sim.crashGhost(address, prng.chance(0.5));
    }
    if (prng.chance(diskFullRate)) {
      const server = sim.servers.get(id);
      if (server !== undefined && !server.disk.full) {
        server.disk.full = true;
        faults.diskFullEpisodes++;
        sim.at(prng.intInclusive(10, 1_000), () => (server.disk.full = false));
      }
    }
    if (prng.chance(partitionRate)) {
      const groups = drawPartition(prng, ids());
      // Older processes of re-added ids take a side of their own: the partitions are by address,
      // and one may sit apart from the new process of its id.
      const ghosts = sim.runningGhosts();
      for (const address of ghosts) (prng.chance(0.5) ? groups[0] : groups[1]).push(address);
      if (ghosts.length > 0) sim.notePartitionedGhosts();
      sim.network.partition(groups);
      faults.partitions++;
      sim.at(prng.intInclusive(10, 1_500), () => sim.network.heal());
    }
    if (prng.chance(pauseLeaderRate)) {
      // The leader is cut off and stalled past the election timeout (as `kv chaos` pauses a
      // partitioned leader): it must not answer from its old lease when it resumes.
      const leader = sim.leader();
      if (leader !== undefined) {
        const stallMs = prng.intInclusive(electionTicks * tickMs, 500);
        sim.network.partition([[leader], ids().filter((other) => other !== leader)]);
        sim.stall(leader, stallMs);
        faults.partitions++;
        sim.at(stallMs + prng.intInclusive(0, 300), () => sim.network.heal());
      }
    }
    if (prng.chance(isolateLeaderRate)) {
      // The leader alone is cut off, and runs on: its clients keep calling it while the others
      // elect and commit. It must answer no read from its old term that a write since made stale.
      const leader = sim.leader();
      if (leader !== undefined) {
        sim.network.partition([[leader], ids().filter((other) => other !== leader)]);
        faults.partitions++;
        sim.at(prng.intInclusive(electionTicks * tickMs, 3 * electionTicks * tickMs), () => sim.network.heal());
      }
    }
    if (prng.chance(transferRate)) {
      const leader = sim.leader();
      const node = leader === undefined ? undefined : sim.servers.get(leader)?.node;
      if (node !== undefined) {
        faults.transfers++;
        node.transferLeadership(undefined).catch(() => undefined); // refusals and timeouts are answers too
      }
    }
    if (prng.chance(wallJumpRate)) {
      // A wall clock stepped by one to sixty minutes, either way: past the idempotency window
      // (10 min), a leader that stamped with it as it is would forget every live session at once.
      sim.jumpWallClock(id, (prng.chance(0.5) ? 1 : -1) * prng.intInclusive(60_000, 3_600_000));
    }
    if (prng.chance(membershipRate) && !sim.operatorBusy()) changeMembership();
    sim.at(tickMs, nemesis);
  };
  sim.at(tickMs, nemesis);

  // The operator: one membership change at a time, through the node API (as `/members` and
  // `kv serve --join` use it), while the faults go on. It adds a server with a new id, removes a
  // voter (the leader too: it hands over first), then stops it, or lets a removed server join again
  // on a wiped disk; the configuration stays within 2 voters and 7 members. Or it replaces a
  // member: removes it while it is cut off, loses track of its process, which runs on, and adds its
  // id again for a new process on an empty disk; the old one reaches its peers again later, before
  // or after they applied the addition (NodeSim.detach).
  let nextId = nodeCount + 1;
  const pickTarget = () => prng.pick(ids());
  const changeMembership = (): void => {
    const members = sim.members();
    if (members === undefined) return;
    const leader = sim.leader() as NodeId;
    const voters = sim.servers.get(leader)?.node?.members().members.filter((member) => member.role === "voter").map((member) => member.id) ?? [];
    const retired = ids().filter((id) => sim.servers.get(id)?.lifecycle === "retired");
    const action = prng.pick(["add", "remove", "remove", "rejoin", "replace"] as const);
    if (action === "replace" && voters.length > 2) {
      const victim = prng.pick(voters.filter((id) => id !== leader));
      if (victim === undefined) return;
      sim.network.isolate(victim);
      sim.removeMember(victim, pickTarget).then(() => {
        const address = sim.detach(victim);
        sim.join(victim, pickTarget).then(() => {
          if (address !== undefined) sim.at(prng.intInclusive(0, 2_000), () => sim.releaseGhost(address));
        }, (error: unknown) => sim.raise(error));
      }, (error: unknown) => sim.raise(error));
    } else if (action === "remove" && voters.length > 2) {
      const victim = prng.chance(0.3) ? leader : prng.pick(voters);
      sim.removeMember(victim, pickTarget).then(() => {
        // The operator stops the removed server a while later: meanwhile clients still call it.
        const retireMs = prng.intInclusive(0, 1_000);
        sim.at(retireMs, () => sim.retire(victim));
      }, (error: unknown) => sim.raise(error));
    } else if (action === "add" && members.length < membersMax && nextId <= serversMax) {
      sim.join(nextId++, pickTarget).catch((error: unknown) => sim.raise(error));
    } else if (action === "rejoin" && retired.length > 0 && members.length < membersMax) {
      sim.join(prng.pick(retired), pickTarget).catch((error: unknown) => sim.raise(error));
    }
  };

  hooks.onStart?.(sim);
  let watchStats = { watchers: 0, streams: 0, events: 0, compactedResumes: 0, referenceUnavailable: 0, slowWatcherEnds: 0, compactedEnds: 0 };
  try {
    await sim.runUntil(runMs);
    await sim.healAndCheck(keys, 60_000);
    // The final state, once every transfer was answered (or given up) and every member applied the
    // leader's commit: the members then hold one state machine, and it holds every transfer
    // acknowledged (read from one member's disk straight after convergence, it could miss one
    // still committing: seed 1062).
    let members: ReturnType<NodeSim["membersCaughtUp"]>;
    const settled = await sim.runUntilTrue(() => bank.inFlight() === 0 && (members = sim.membersCaughtUp()) !== undefined, 60_000);
    if (!settled) throw new SimViolation(`the bank's last transfers did not settle within 60 s\n${sim.describe()}`);
    const member = members?.[0];
    const rows = new Map((member?.disk.contents().list(BANK_PREFIX, undefined, 1_000) ?? []).map((row) => [row.key, row]));
    bank.check(bank.accounts.map((key) => {
      const row = rows.get(key);
      return row === undefined ? { key, value: null, version: 0 } : { key, value: new TextDecoder().decode(row.value), version: row.version };
    }));
    // Every watcher reaches the final version, and what each received is judged.
    const throughVersion = member?.disk.appliedIndex() ?? 0;
    await watchers.catchUp(throughVersion, 60_000);
    watchStats = await watchers.check((members ?? []).map((server) => server.id), sim.closeHistory(), throughVersion, 30_000);
    sim.checkLeases();
  } catch (error: unknown) {
    const detail = error instanceof Error ? error.message : String(error);
    // Described before it stops: stopped, every node reads as down.
    const nodes = sim.describe();
    sim.stop();
    // The trace digest so far: a replay must fail at the same point with the same one.
    const trace = `trace ${sim.traceDigest()} after ${sim.eventsRun} events`;
    throw new SimViolation(`node swarm seed=${seed} failed at ${sim.nowMs} ms (${trace}): ${detail}\nreplay: ${nodeSwarmReplay(seed, durationMs)}\n${nodes}`, { cause: error });
  }
  const finalState = [...sim.servers.values()].map((s) => `${s.id}:${s.disk.appliedIndex()}`).join(",");
  const history = sim.history.map((op) => `${op.id}/${op.kind}/${op.key}/${op.outcome}/${op.callMs}/${op.returnMs ?? "?"}/${op.output ?? ""}/${op.version ?? ""}/${op.ifVersion ?? ""}/${op.refusedAtVersion ?? ""}`).join(";");
  const digest = fnv1a(`${sim.traceDigest()}|${sim.eventsRun}|${history}|${bank.digestText()}|${watchers.digestText()}|${finalState}|${sim.nowMs}|${prng.next()}`);
  const snapshotsInstalled = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.snapshotsInstalled, 0);
  const storageThreadAnswers = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.threadAnswers, 0);
  const storageThreadInstalls = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.threadInstalls, 0);
  const storageThreadBlockedWrites = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.threadBlockedWrites, 0);
  const stateMachineAhead = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.stateMachineAhead, 0);
  const unsyncedSavesKept = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.unsyncedSavesKept, 0);
  const threadWorkLost = [...sim.servers.values()].reduce((sum, server) => sum + server.disk.threadWorkLost, 0);
  sim.stop();
  return {
    seed,
    nodeCount,
    simulatedMs: sim.nowMs,
    operations: sim.history.length,
    acknowledgedWrites: sim.stats.acknowledgedWrites,
    prefixDeletes: sim.stats.prefixDeletes,
    crashes: sim.stats.crashes,
    powerLosses: sim.stats.powerLosses,
    stalls: sim.stats.stalls,
    diskFullEpisodes: faults.diskFullEpisodes,
    partitions: faults.partitions,
    transfers: faults.transfers,
    joins: sim.stats.joins,
    rejoins: sim.stats.rejoins,
    removals: sim.stats.removals,
    leaderRemovals: sim.stats.leaderRemovals,
    serversEver: sim.servers.size,
    snapshotsInstalled,
    storageThreadAnswers,
    storageThreadBlockedWrites,
    storageThreadInstalls,
    stateMachineAhead,
    unsyncedSavesKept,
    threadWorkLost,
    repliesCarried: sim.network.repliesCarried,
    unaddressedDropped: sim.network.unaddressedDropped,
    bankTransfers: bank.history.filter((op) => op.kind === "transfer" && op.outcome === "ok" && op.succeeded === true).length,
    bankReads: bank.history.filter((op) => op.kind === "read").length,
    watchers: watchStats.watchers,
    watchStreams: watchStats.streams,
    watchEvents: watchStats.events,
    watchCompactedResumes: watchStats.compactedResumes,
    watchSlowWatcherEnds: watchStats.slowWatcherEnds,
    watchCompactedEnds: watchStats.compactedEnds,
    compactSteps: [...sim.servers.values()].reduce((sum, server) => sum + server.disk.compactSteps, 0),
    peerCallsRefusedRemoved: sim.network.refused.removed,
    removedToldByPeer: sim.network.toldRemoved,
    staleProcesses: sim.stats.staleProcesses,
    olderProcessCalls: sim.stats.olderProcessCalls,
    olderProcessStalls: sim.stats.olderProcessStalls,
    olderProcessCrashes: sim.stats.olderProcessCrashes,
    olderProcessPartitions: sim.stats.olderProcessPartitions,
    peerCallsRefusedStaleMember: sim.network.refused.stale_member,
    peerCallsRefusedStaleRecipient: sim.network.refused.stale_recipient,
    watchReferenceUnavailable: watchStats.referenceUnavailable,
    retries: sim.stats.retries,
    sessionAnswers: sim.stats.sessionAnswers,
    refusedCompareAndSets: sim.stats.refusedCompareAndSets,
    leaseKeysJudged: sim.stats.leaseKeysJudged,
    wallClockJumps: sim.stats.wallClockJumps,
    leasesGranted: sim.stats.leasesGranted,
    leaseKeepalives: sim.stats.leaseKeepalives,
    leasesRevoked: sim.stats.leasesRevoked,
    leasesExpired: sim.stats.leasesExpired,
    events: sim.eventsRun,
    digest,
  };
}
