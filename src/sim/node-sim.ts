import { type CheckResult, checkLinearizable } from "../chaos/linearizability.ts";
import type { Operation } from "../chaos/history.ts";
import { assert } from "../lib/assert.ts";
import type { Clock } from "../lib/clock.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { fnv1aBasis, fnv1aMix, fnv1aMixInts } from "../lib/fnv1a.ts";
import { KvError, type KvErrorCode } from "../lib/kv-error.ts";
import { createPrng, type Prng } from "../lib/prng.ts";
import { configurationOfMembers } from "../kv/membership.ts";
import { StateHasher, type StateHash } from "../kv/state-hash.ts";
import type { MembersView } from "../node/api.ts";
import { KvNode } from "../node/kv-node.ts";
import { peerIdentityOf } from "../node/membership.ts";
import type { WatchConfig } from "../node/watch.ts";
import { EntryType, type Entry, type Message, type NodeId } from "../raft/types.ts";
import type { ApplyResult, KvTable } from "../kv/apply-plan.ts";
import { leaseExists } from "../kv/leases.ts";
import { type Command, decodeCommand, deletePrefixKeysMax } from "../kv/command.ts";
import type { KvImageReader } from "../storage/kv-storage.ts";
import { createMemoryKvStorage } from "../storage/memory-storage.ts";
import { SimDisk } from "./sim-disk.ts";
import { peerRpcTimeoutMs } from "../transport/connect-transport.ts";
import { SimNetwork, type SimNetworkFaults } from "./sim-transport.ts";

/** A broken guarantee found by the simulator's checkers. */
export class SimViolation extends Error {
  override name = "SimViolation";
}

/** How a simulated cluster of real node loops is set up; every fault setting is drawn from the seed. */
export interface NodeSimOptions {
  readonly seed: number;
  readonly nodeCount: number;
  readonly tickMs: number;
  readonly electionTicks: number;
  readonly heartbeatTicks: number;
  /** A write or read not answered within this fails with `timeout` (outcome unknown). */
  readonly requestTimeoutMs: number;
  readonly snapshotEntries: number;
  readonly snapshotCatchUpEntries: number;
  /** The log entries one tick's compaction drops at most (the node's default when absent). */
  readonly compactStepEntries?: number;
  /**
   * Each node's clock runs slow or fast by a rate drawn in [-clockDriftMax, clockDriftMax]: at 0.1
   * a leader 10% slow against a voter 10% fast, within the lease's drift bound (src/raft/raft.ts
   * `leaseTicks`) for every election timeout the swarm draws.
   */
  readonly clockDriftMax: number;
  /** Fsync latency, in simulated ms, drawn per fsync in [fsyncMsMin, fsyncMsMax]. */
  readonly fsyncMsMin: number;
  readonly fsyncMsMax: number;
  /**
   * When set, every disk answers applies and installs as a storage writing on its own thread does
   * (src/sim/sim-disk.ts), each after a latency drawn in [0, storageThreadMsMax]; otherwise at once.
   */
  readonly storageThreadMsMax?: number;
  readonly network: SimNetworkFaults;
  /** Watch settings of every node (the node's defaults where absent): small ones turn the history over and end lagging streams. */
  readonly watch?: Partial<WatchConfig>;
}

/** An event on the simulated clock. */
interface SimEvent {
  readonly atMs: number;
  readonly sequence: number;
  readonly run: () => void;
  /** A cancelled event is skipped: no turn, no check, no trace (a call's deadline after its answer). */
  cancelled: boolean;
}

/** One simulated server: its process (a real KvNode) while it runs, its disk always. */
interface SimServer {
  readonly id: NodeId;
  /** How many servers of this id were made before this one (a re-added id's: see `detach`). */
  readonly generation: number;
  /**
   * Where its process is reached, and the key the simulator runs it by: its id, except for an
   * older process of an id removed and added again (see `NodeSim.detach`).
   */
  address: number;
  readonly disk: SimDisk;
  /** Its `--cluster` flag: the first voters for the first servers, only itself for one that joined. */
  peers: ReadonlyMap<NodeId, string>;
  /**
   * `member`: its data dir is set up (bootstrapped, or joined) and it (re)starts after a crash;
   * `joining`: created, waiting for the cluster to answer its addition (no process yet);
   * `retired`: removed and stopped by the operator (no restart; its disk kept for the checkers).
   */
  lifecycle: "member" | "joining" | "retired";
  node: KvNode | undefined;
  /** The running process's peer directory (see `createNode`); undefined before its first start. */
  peerDirectory?: Map<NodeId, string>;
  /** Loop turns the node asked for, run once the current event is done (unless stalled). */
  turns: (() => void)[];
  /** What was handed to the process while it stood still, run in order once it runs (see `whenRunning`). */
  deferred: (() => void)[];
  /** Stalled (GC, a slow disk call, SIGSTOP) until this simulated time: no timer fires, no turn runs. */
  stalledUntilMs: number;
  /** This node's clock runs at this rate of simulated time (drift). */
  readonly clockRate: number;
  /** How far this node's wall clock is off (leaders stamp idempotent writes with it). */
  wallSkewMs: number;
  /** Incremented at each (re)start: timers of a dead process never fire for the next one. */
  incarnation: number;
  /** When set, every fsync of this disk takes this long instead of a drawn latency (directed scenarios). */
  fsyncMs: number | undefined;
  /** When set, how many of the saves written since the last fsync a power loss keeps, instead of a drawn number (directed scenarios). */
  unsyncedSavesKept: number | undefined;
  /**
   * When set (with a storage thread, `storageThreadMsMax`), every apply and install this disk's
   * thread answers takes this long instead of a drawn latency (directed scenarios).
   */
  storageThreadMs: number | undefined;
  /** The committed entries this process has had checked so far (from its start: a restart checks again). */
  checkedIndex: number;
  /** The node's record that it holds its votes, beside its disk (`KvNodeConfig.voteHold`): durable, gone with a wiped disk. */
  voteHoldRecorded: boolean;
}

/** Where the simulated wall clocks start (a fixed instant, so a seed replays). */
const simulatedEpochMs = Date.UTC(2026, 0, 1);

/**
 * Whether an error says the write certainly did not take effect: every code but `timeout`, by the
 * rule clients retry by and `kv chaos` judges by (src/client/outcome.ts: any 4xx, and the 5xx that
 * say nothing was proposed). `unavailable` was judged unknown here, so the swarm could not catch a
 * node that answered it for a write it had proposed (found in review); test/node-sim.test.ts keeps
 * this rule and the client's in step, code by code.
 */
export function isRefusal(code: KvErrorCode): boolean {
  return code !== "timeout";
}

/**
 * A whole cluster of real node loops (`KvNode`, the code the server runs) in one process, on a
 * simulated disk (`SimDisk`), network (`SimNetwork`) and clock, driven by one seed in the manner of
 * TigerBeetle's VOPR. Nothing here is a second copy of the loop: the simulator only decides when
 * things happen. Clients call the node API and record what they were answered; the same
 * linearizability checker `kv chaos` uses judges those answers. Election safety and log matching of
 * committed entries are checked after every event; a run ends by healing everything and requiring
 * the cluster to converge on one state machine.
 */
export class NodeSim {
  readonly opts: NodeSimOptions;
  nowMs = 0;
  /** The ms and the count of history records in it (see `historyTime`). */
  private historyTimeMs = -1;
  private historyTimeStep = 0;
  private readonly events: SimEvent[] = [];
  private eventSequence = 0;
  /** Draws fsync latencies, apart from the rest. */
  private readonly diskPrng: Prng;
  readonly network: SimNetwork;
  readonly servers = new Map<NodeId, SimServer>();
  /** Operations answered (ok or refused), in the order of their answers. */
  readonly history: Operation[] = [];
  /** Operations whose outcome is unknown (a timeout, a node stopped with it in flight). */
  private readonly unknown: Operation[] = [];
  private operationSequence = 0;
  /** Operations called and not answered yet (their `Operation` is written once they are). */
  private readonly inflight = new Map<number, { clientId: number; kind: Operation["kind"]; key: string; value?: string; ifVersion?: number; callMs: number }>();
  // ---- Checker state ----
  /**
   * term → the process that led it: its server and incarnation (two processes of one id, or two
   * lives of one server, are two leaders). By server, not address: an older process keeps leading
   * the term it led as its id once `detach` moved it (found in the swarm: seed 773 called it a
   * second leader of its own term). By incarnation too: a life after a power loss that forgot its
   * term and led it again was one server, and went unseen (found in a review).
   */
  private readonly leaderOfTerm = new Map<number, { readonly server: SimServer; readonly incarnation: number }>();
  /** index → `${term}:${data}` of the entry committed there, as first seen on any node. */
  private readonly committed = new Map<number, string>();
  /** Each leader's term and commit index after the last event, by its server (see `checkCommitDurable`). */
  private readonly leaderCommit = new Map<SimServer, { term: number; commit: number; voters: NodeId[] }>();
  /**
   * Older processes of ids that were removed while cut off and added again for a new process (see
   * `detach`), by address: they run on, and call their peers as their id.
   */
  readonly ghosts = new Map<number, SimServer>();
  private ghostAddressNext = ghostAddressFirst;
  /** Addresses of older processes that reach their peers again (`releaseGhost`). */
  private readonly releasedGhosts = new Set<number>();
  /**
   * A running digest of the whole run: after every event, its time and every running node's role,
   * term, commit, applied and last index. Two runs of one seed must end with the same (bit for bit).
   */
  private traceHash = fnv1aBasis;
  /** Events run so far. */
  eventsRun = 0;
  /** Things that happened, for proof the paths were exercised. */
  readonly stats = {
    crashes: 0,
    powerLosses: 0,
    stalls: 0,
    diskFullEpisodes: 0,
    partitions: 0,
    transfers: 0,
    snapshotsSent: 0,
    acknowledgedWrites: 0,
    /** Deletes by prefix answered ok (among `acknowledgedWrites`). */
    prefixDeletes: 0,
    fatal: 0,
    /** Servers that joined (new ids, and removed ids joining again on a wiped disk), and members removed (leaders among them). */
    joins: 0,
    rejoins: 0,
    removals: 0,
    leaderRemovals: 0,
    /** Leases granted, keepalives answered, leases revoked, and lease expiries applied (see `checkLeases`). */
    leasesGranted: 0,
    leaseKeepalives: 0,
    leasesRevoked: 0,
    leasesExpired: 0,
    /** Steps of a server's wall clock (as NTP steps one), forward or back. */
    wallClockJumps: 0,
    /** Writes sent again under their idempotency key, and applies answered from a session (changing nothing). */
    retries: 0,
    sessionAnswers: 0,
    /** Compare-and-set writes refused `version_mismatch`, each judged as a read of the version its answer named. */
    refusedCompareAndSets: 0,
    /** Keys lease clients put attached to a lease (answered or not), judged against the converged state (`checkLeaseKeys`). */
    leaseKeysJudged: 0,
    /** Processes left running under an id that was removed and added again (see `detach`), and client calls they were sent. */
    staleProcesses: 0,
    olderProcessCalls: 0,
    /** Faults that befell older processes once they reached their peers again: stalls, crashes, and partitions they took a side in. */
    olderProcessStalls: 0,
    olderProcessCrashes: 0,
    olderProcessPartitions: 0,
  };
  /** Membership changes the operator has under way (see `join`, `removeMember`): healing waits for them. */
  private operatorChanges = 0;
  private raised: Error | undefined;

  constructor(opts: NodeSimOptions) {
    this.opts = opts;
    this.diskPrng = createPrng(opts.seed ^ 0xd15c);
    const clockPrng = createPrng(opts.seed ^ 0xc10c);
    this.network = new SimNetwork(
      createPrng(opts.seed ^ 0x5eed),
      {
        nowMs: () => this.nowMs,
        at: (delayMs, fn) => this.at(delayMs, fn),
        running: (address) => this.isRunning(address),
        sent: (from, messages) => this.checkVotesDurable(from, messages),
      },
      // As the server sets its peer calls' deadline (src/server/create-server.ts).
      { rpcTimeoutMs: peerRpcTimeoutMs(opts.tickMs, opts.electionTicks) },
    );
    this.network.faults = opts.network;
    this.clockPrng = clockPrng;
    const voters = Array.from({ length: opts.nodeCount }, (_, i) => i + 1);
    const peers = new Map(voters.map((id) => [id, peerUrlOf(id)] as [NodeId, string]));
    for (const id of voters) this.createServer(id, peers, "member");
    for (const id of voters) this.start(id);
  }

  /** Servers made per id so far: a re-added id's new server draws apart from its older one (see `SimServer.generation`). */
  private readonly serversMadeFor = new Map<NodeId, number>();
  /** Draws each server's clock drift and wall-clock skew, apart from the rest. */
  private readonly clockPrng: Prng;

  /** A server with an empty disk (not started). */
  private createServer(id: NodeId, peers: ReadonlyMap<NodeId, string>, lifecycle: SimServer["lifecycle"]): SimServer {
    // The latency is drawn even when overridden, so a directed scenario's other draws stay as they were.
    const threadMsMax = this.opts.storageThreadMsMax;
    // The disk's hooks read the server they belong to, not whichever holds the id now (see `detach`).
    let server!: SimServer;
    const disk = new SimDisk(createMemoryKvStorage(), {
      deliver: (fn) => this.whenRunning(server.address, fn),
      applied: (entries, results) => {
        // Whatever the node applies is committed: checked as it applies, so an entry compacted in
        // the same event it was applied in is still compared (found in review: the log's check
        // after each event never saw such entries).
        for (const entry of entries) this.agreeCommitted(id, entry);
        this.checkAppliedOnce(id, entries, results);
        this.noteLeaseExpiries(results);
      },
      raise: (error) => this.raise(error),
      keptOnPowerLoss: (unsynced) => {
        const drawn = this.diskPrng.intInclusive(0, unsynced);
        return Math.min(unsynced, server.unsyncedSavesKept ?? drawn);
      },
      fsync: (done) => {
        const drawnMs = this.diskPrng.intInclusive(this.opts.fsyncMsMin, this.opts.fsyncMsMax);
        this.at(server.fsyncMs ?? drawnMs, done);
      },
      ...(threadMsMax === undefined
        ? {}
        : {
            storageThread: (done: () => void) => {
              const drawnMs = this.diskPrng.intInclusive(0, threadMsMax);
              void this.at(server.storageThreadMs ?? drawnMs, done);
            },
          }),
    });
    const clockRate = 1 + (2 * this.clockPrng.next() - 1) * this.opts.clockDriftMax;
    const wallSkewMs = this.clockPrng.intInclusive(-5_000, 5_000);
    const generation = this.serversMadeFor.get(id) ?? 0;
    this.serversMadeFor.set(id, generation + 1);
    server = { id, generation, address: id, disk, peers, lifecycle, node: undefined, turns: [], deferred: [], stalledUntilMs: 0, clockRate, wallSkewMs, incarnation: 0, fsyncMs: undefined, unsyncedSavesKept: undefined, storageThreadMs: undefined, checkedIndex: 0, voteHoldRecorded: false };
    this.servers.set(id, server);
    return server;
  }

  // ---- The clock and the event queue --------------------------------------------------------

  /**
   * Runs `fn` `delayMs` from now (events at the same time run in the order they were scheduled);
   * returns what cancels it.
   */
  at(delayMs: number, fn: () => void): () => void {
    const event: SimEvent = { atMs: this.nowMs + Math.max(0, delayMs), sequence: this.eventSequence++, run: fn, cancelled: false };
    // A binary heap ordered by (atMs, sequence).
    const heap = this.events;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i] as SimEvent, heap[parent] as SimEvent)) break;
      [heap[i], heap[parent]] = [heap[parent] as SimEvent, heap[i] as SimEvent];
      i = parent;
    }
    return () => {
      event.cancelled = true;
    };
  }

  private popEvent(): SimEvent | undefined {
    const heap = this.events;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) return top;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && before(heap[left] as SimEvent, heap[smallest] as SimEvent)) smallest = left;
      if (right < heap.length && before(heap[right] as SimEvent, heap[smallest] as SimEvent)) smallest = right;
      if (smallest === i) break;
      [heap[i], heap[smallest]] = [heap[smallest] as SimEvent, heap[i] as SimEvent];
      i = smallest;
    }
    return top;
  }

  /** Node `id`'s clock: simulated time at its drift rate; its timers do not fire while it is stalled. */
  private clockOf(server: SimServer): Clock {
    const incarnation = server.incarnation;
    return {
      nowMs: () => this.nowMs * server.clockRate,
      wallMs: () => simulatedEpochMs + server.wallSkewMs + this.nowMs * server.clockRate,
      every: (intervalMs, fn) => {
        let active = true;
        let nextNodeMs = this.nowMs * server.clockRate + intervalMs;
        const arm = () => {
          this.at(nextNodeMs / server.clockRate - this.nowMs, () => {
            if (!active || server.incarnation !== incarnation) return;
            // Like setInterval after a stall: the firings missed meanwhile are not made up.
            if (this.isRunning(server.address)) fn();
            const nodeNow = this.nowMs * server.clockRate;
            nextNodeMs = Math.max(nextNodeMs + intervalMs, Math.floor(nodeNow / intervalMs) * intervalMs + intervalMs);
            arm();
          });
        };
        arm();
        return () => {
          active = false;
        };
      },
    };
  }

  /**
   * Runs `fn` now while the process at `address` runs, else once its stall is over (or it is gone),
   * after what was handed to it before, in order: the storage thread's answers reach the process
   * in the order it sent them (a stall extended meanwhile let a later answer overtake an earlier
   * one, and the node applied entries out of order: found by the simulator once the thread went on
   * while the process stood still).
   */
  private whenRunning(address: number, fn: () => void): void {
    const server = this.processAt(address);
    if (server === undefined || ((server.node === undefined || this.nowMs >= server.stalledUntilMs) && server.deferred.length === 0)) return fn();
    server.deferred.push(fn);
    if (server.deferred.length === 1) this.drainDeferred(server);
  }

  private drainDeferred(server: SimServer): void {
    this.at(Math.max(0, server.stalledUntilMs - this.nowMs), () => {
      if (server.node !== undefined && this.nowMs < server.stalledUntilMs) return this.drainDeferred(server);
      const deferred = server.deferred;
      server.deferred = [];
      for (const fn of deferred) fn();
    });
  }

  /** Whether the process at `address` (a node's id, or an older process's address: see `detach`) runs and is not stalled. */
  isRunning(address: number): boolean {
    const server = this.processAt(address);
    return server?.node !== undefined && this.nowMs >= server.stalledUntilMs;
  }

  private processAt(address: number): SimServer | undefined {
    return this.servers.get(address) ?? this.ghosts.get(address);
  }

  /** Every server, then the older processes still running under re-added ids. */
  private everyProcess(): SimServer[] {
    return [...this.servers.values(), ...this.ghosts.values()];
  }

  // ---- Processes ----------------------------------------------------------------------------

  private start(id: NodeId): void {
    const server = this.servers.get(id) as SimServer;
    assert(server.node === undefined, `node ${id} is running`);
    server.incarnation++;
    server.turns = [];
    server.stalledUntilMs = 0;
    server.checkedIndex = 0;
    assert(server.lifecycle === "member", `node ${id} is ${server.lifecycle}: it has no data dir to start from`);
    let node: KvNode;
    try {
      node = this.createNode(server, server.peers);
    } catch (error: unknown) {
      if (!isDiskFull(error)) throw error;
      // As `kv serve` does on a full disk: wait for space and try again.
      server.incarnation++;
      this.at(100, () => this.restart(id));
      return;
    }
    server.node = node;
    const directory = server.peerDirectory;
    node.start(
      this.network.connect(
        id,
        httpUrlOf(id),
        (messages) => node.receive(messages),
        (chunk) => node.receiveSnapshotChunk(chunk),
        (peer) => directory?.has(peer) === true,
        // Who this process is and what it applied, as the server's transport reads them
        // (src/server/create-server.ts): the receivers' guards run on every call.
        {
          ...peerIdentityOf(server.disk),
          clusterNonce: () => node.clusterNonce(),
          onRemoved: (by, detail) => node.removedByPeer(by, detail),
        },
      ),
    );
  }

  private createNode(server: SimServer, peers: ReadonlyMap<NodeId, string>): KvNode {
    const id = server.id;
    // The addresses this process knows, kept by the node as its configuration changes (as the
    // server's transport map is): the network reaches only these (see SimNetwork.connect).
    const peerDirectory = new Map([...peers].filter(([peer]) => peer !== id));
    server.peerDirectory = peerDirectory;
    return new KvNode({
      id,
      peers,
      peerDirectory,
      httpUrl: httpUrlOf(id),
      storage: server.disk,
      clock: this.clockOf(server),
      // The generation apart: a re-added id's new process drew the same numbers (read nonces,
      // timeouts) as its older one, which production's processes never do (found in a review).
      prng: createPrng((this.opts.seed * 31 + id * 7919 + server.incarnation * 104729 + server.generation * 15485863) >>> 0),
      tickMs: this.opts.tickMs,
      electionTicks: this.opts.electionTicks,
      heartbeatTicks: this.opts.heartbeatTicks,
      requestTimeoutMs: this.opts.requestTimeoutMs,
      pendingRequestsMax: 10_000,
      inboxMessagesMax: 10_000,
      snapshotEntries: this.opts.snapshotEntries,
      snapshotCatchUpEntries: this.opts.snapshotCatchUpEntries,
      ...(this.opts.compactStepEntries === undefined ? {} : { compactStepEntries: this.opts.compactStepEntries }),
      ...(this.opts.watch === undefined ? {} : { watch: this.opts.watch }),
      schedule: (turn) => server.turns.push(turn),
      voteHold: { recorded: server.voteHoldRecorded, record: (held) => (server.voteHoldRecorded = held) },
      onFatal: (error) => {
        this.stats.fatal++;
        // Raised, not thrown: a turn started from a promise's callback (an fsync's, an apply's)
        // turned the throw into an unhandled rejection, and the run neither failed with its seed
        // and replay line nor ended (found in a review). The next check after this event throws it.
        this.raise(new SimViolation(`node ${id} stopped on its own: ${error.message}`));
      },
    });
  }

  /** Kills node `id`'s process; on power loss what it wrote since its last fsync is gone too. */
  crash(id: NodeId, powerLoss: boolean): void {
    const server = this.servers.get(id) as SimServer;
    const node = server.node;
    if (node === undefined) return;
    this.stopProcess(server, node, powerLoss);
    this.stats.crashes++;
    if (powerLoss) this.stats.powerLosses++;
  }

  private stopProcess(server: SimServer, node: KvNode, powerLoss: boolean): void {
    const id = server.id;
    server.node = undefined;
    server.incarnation++;
    server.turns = [];
    // What its storage thread had answered dies with it (each answer checks its process anyway).
    server.deferred = [];
    this.network.disconnectProcess(server.address);
    node.stop();
    server.disk.restartFrom(server.disk.afterCrash(powerLoss));
  }

  /**
   * Empties the data dir of node `id`, which must be down: its disk, and the record of a vote hold
   * beside it. `restart` then starts it as a new server with the same id and peers would.
   */
  wipeDataDir(id: NodeId): void {
    const server = this.servers.get(id) as SimServer;
    assert(server.node === undefined, `node ${id} is running: stop it before emptying its data dir`);
    this.wipe(server);
  }

  private wipe(server: SimServer): void {
    server.disk.restartFrom(createMemoryKvStorage());
    server.voteHoldRecorded = false;
  }

  /** Starts node `id`'s process again if it is down (a server still joining, or retired, stays down). */
  restart(id: NodeId): void {
    const server = this.servers.get(id);
    if (server !== undefined && server.node === undefined && server.lifecycle === "member") this.start(id);
  }

  /** Stalls node `id`'s process for `ms`: its clock runs on, it does nothing until then. */
  stall(id: NodeId, ms: number): void {
    if (this.stallProcess(this.servers.get(id) as SimServer, ms)) this.stats.stalls++;
  }

  private stallProcess(server: SimServer, ms: number): boolean {
    if (server.node === undefined) return false;
    server.stalledUntilMs = Math.max(server.stalledUntilMs, this.nowMs + ms);
    // Wake-up: the node runs the turns it missed (and its timer fires at its next interval).
    this.at(ms, () => undefined);
    return true;
  }

  /** Older processes (see `detach`) that run and reach their peers again, by address. */
  runningGhosts(): number[] {
    return [...this.releasedGhosts].filter((address) => this.ghosts.get(address)?.node !== undefined);
  }

  /** Stalls the older process at `address` for `ms`, as `stall` does a node. */
  stallGhost(address: number, ms: number): void {
    if (this.stallProcess(this.ghosts.get(address) as SimServer, ms)) this.stats.olderProcessStalls++;
  }

  /** Kills the older process at `address` for good: nobody keeps track of it to start it again. */
  crashGhost(address: number, powerLoss: boolean): void {
    const server = this.ghosts.get(address) as SimServer;
    if (server.node === undefined) return;
    this.stopProcess(server, server.node, powerLoss);
    this.stats.olderProcessCrashes++;
  }

  /** Counts a partition that put older processes on a side of their own choosing (see `runningGhosts`). */
  notePartitionedGhosts(): void {
    this.stats.olderProcessPartitions++;
  }

  // ---- The operator: membership changes through the node API --------------------------------

  /** Resolves `ms` of simulated time from now (never, once the run is stopped). */
  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => void this.at(ms, resolve));
  }

  /** Whether the operator has a membership change under way. */
  operatorBusy(): boolean {
    return this.operatorChanges > 0;
  }

  /**
   * Adds server `id` as `kv serve --join` does (src/server/join.ts), through the node API the
   * `/members` routes call: asks a node to add it as a learner, follows `not_leader` to the leader
   * and retries whatever else it is answered; once a node answers with the configuration after the
   * addition (or, the answer to an earlier attempt lost, says `member_exists` and lists it), the
   * server records that configuration on its empty disk (`bootstrapJoined`, durable as sqlite's
   * commit) and starts, to catch up by log or snapshot until the leader promotes it. An id removed
   * before (retired) joins again on a wiped disk, as an operator would run it again. Resolves once
   * the server started.
   */
  async join(id: NodeId, pickTarget: () => NodeId): Promise<void> {
    const peers = new Map([[id, peerUrlOf(id)] as [NodeId, string]]);
    const existing = this.servers.get(id);
    let server: SimServer;
    if (existing === undefined) {
      server = this.createServer(id, peers, "joining");
      this.stats.joins++;
    } else {
      assert(existing.lifecycle === "retired" && existing.node === undefined, `node ${id} is ${existing.lifecycle}: it cannot join`);
      server = existing;
      server.lifecycle = "joining";
      server.peers = peers;
      this.wipe(server);
      this.stats.rejoins++;
    }
    this.operatorChanges++;
    try {
      let target = pickTarget();
      for (let attempt = 0; attempt < operatorAttemptsMax; attempt++) {
        const node = this.servers.get(target)?.node;
        let view: MembersView | undefined;
        let redirect: NodeId | undefined;
        if (node !== undefined) {
          try {
            view = await node.addMember(id, peerUrlOf(id), httpUrlOf(id));
          } catch (error: unknown) {
            if (!(error instanceof KvError)) throw error;
            if (error.code === "member_exists") {
              const listed = node.members();
              if (listed.members.some((member) => member.id === id)) view = listed;
            } else if (error.code === "not_leader") redirect = error.details.leaderId;
          }
        }
        if (view !== undefined) {
          const storage = createMemoryKvStorage();
          storage.bootstrapJoined(configurationOfMembers(view.members), view.configIndex);
          server.disk.restartFrom(storage);
          server.lifecycle = "member";
          this.start(id);
          return;
        }
        await this.sleep(redirect === undefined ? operatorRetryMs : 0);
        target = redirect ?? pickTarget();
      }
      throw new SimViolation(`node ${id} could not join within ${operatorAttemptsMax} attempts`);
    } finally {
      this.operatorChanges--;
    }
  }

  /**
   * Removes member `id` through the node API (`DELETE /members/{id}`), following `not_leader` (a
   * leader asked to remove itself hands over first and names the new leader) and retrying whatever
   * else it is answered, until a leader answers that it applied the removal (or, the answer to an
   * earlier attempt lost, that `id` is no member). The server keeps running until `retire`.
   */
  async removeMember(id: NodeId, pickTarget: () => NodeId): Promise<void> {
    this.operatorChanges++;
    if (this.leader() === id) this.stats.leaderRemovals++;
    try {
      let target = pickTarget();
      for (let attempt = 0; attempt < operatorAttemptsMax; attempt++) {
        const node = this.servers.get(target)?.node;
        let redirect: NodeId | undefined;
        if (node !== undefined) {
          try {
            await node.removeMember(id);
            this.stats.removals++;
            return;
          } catch (error: unknown) {
            if (!(error instanceof KvError)) throw error;
            // Only the leader's "not a member" says the removal was applied (a follower may lag).
            if (error.code === "not_found" && node.status().role === "leader") {
              this.stats.removals++;
              return;
            }
            if (error.code === "not_leader") redirect = error.details.leaderId;
          }
        }
        await this.sleep(redirect === undefined ? operatorRetryMs : 0);
        target = redirect ?? pickTarget();
      }
      throw new SimViolation(`node ${id} could not be removed within ${operatorAttemptsMax} attempts`);
    } finally {
      this.operatorChanges--;
    }
  }

  /**
   * The operator lost track of removed server `id`, cut off when it was removed, which runs on (it
   * never heard of its removal): its id is free to be added again for a new process on an empty
   * disk (`join`), while this one goes on at an address nobody calls, still calling its peers as
   * node `id` (as a process on another host would, or one whose address the new process took over
   * once it left). Its peers' guards must refuse it: as removed while their configuration does not
   * list the id, and as an older process of the id (`stale_member`) once it does again. Isolated
   * until `releaseGhost`.
   */
  detach(id: NodeId): number | undefined {
    const server = this.servers.get(id) as SimServer;
    if (server.node === undefined) {
      // It died meanwhile: nothing runs on; its id joins again as a removed one does.
      this.network.release(id);
      this.retire(id);
      return undefined;
    }
    const address = this.ghostAddressNext++;
    this.servers.delete(id);
    server.address = address;
    server.lifecycle = "retired";
    this.ghosts.set(address, server);
    this.network.isolate(id);
    this.network.readdress(id, address);
    this.stats.staleProcesses++;
    return address;
  }

  /** The older process at `address` (see `detach`) reaches its peers again. */
  releaseGhost(address: number): void {
    this.network.release(address);
    this.releasedGhosts.add(address);
  }

  /** The operator stops a removed server for good (its disk stays, for the checkers and a later `join`). */
  retire(id: NodeId): void {
    const server = this.servers.get(id) as SimServer;
    if (server.node !== undefined) this.stopProcess(server, server.node, false);
    server.lifecycle = "retired";
  }

  /**
   * Idempotency keys of writes that changed the state (not answered from their session), and the
   * index of the entry that did: a retry under the same key must never change it again.
   */
  private readonly idempotentChanges = new Map<string, number>();

  /**
   * Checks that no write whose `Idempotency-Key` a client retried changed the state machine twice
   * (thesis §6.3): each key changes it at one index, the same on every server. Answers from a
   * session carry the version of the change they repeat, below their own index.
   */
  private checkAppliedOnce(id: NodeId, entries: readonly Entry[], results: readonly ApplyResult[]): void {
    results.forEach((result, i) => {
      if (result.kind !== "put" && result.kind !== "delete" && result.kind !== "delete-prefix") return;
      const command = decodeCommand((entries[i] as Entry).data);
      if (command.idempotencyKey === undefined) return;
      const before = this.idempotentChanges.get(command.idempotencyKey);
      if (result.version !== result.index) {
        // Answered from its session: with the version of the change it repeats.
        this.stats.sessionAnswers++;
        if (before !== undefined && result.version !== before) {
          this.raise(new SimViolation(`node ${id} answered the write with idempotency key ${command.idempotencyKey} at index ${result.index} from its session with version ${result.version}, but it changed the state at ${before}`));
        }
        return;
      }
      if (before === undefined) this.idempotentChanges.set(command.idempotencyKey, result.index);
      else if (before !== result.index) {
        this.raise(new SimViolation(`node ${id} applied the write with idempotency key ${command.idempotencyKey} at index ${result.index}, which already changed the state at ${before}: applied twice`));
      }
    });
  }

  /** Records when each lease's expiry, or its end by expiry or revoke, first applied on any server (for `checkLeases` and `checkLeaseKeys`). */
  private noteLeaseExpiries(results: readonly ApplyResult[]): void {
    for (const result of results) {
      if (result.kind === "lease-revoked" && !this.leaseEnds.has(result.id)) this.leaseEnds.set(result.id, this.nowMs);
      if (result.kind !== "lease-expired") continue;
      for (const lease of result.ids) {
        if (!this.leaseExpiries.has(lease)) this.leaseExpiries.set(lease, this.nowMs);
        if (!this.leaseEnds.has(lease)) this.leaseEnds.set(lease, this.nowMs);
      }
    }
  }

  /** When each lease's end (expiry or revoke) first applied on any server (simulated ms). */
  private readonly leaseEnds = new Map<number, number>();
  /** The keys lease clients put attached to each lease, and whether the put was answered ok (when it began, then). */
  private readonly leaseKeys = new Map<number, { readonly key: string; okCallMs?: number }[]>();

  /**
   * What the converged state `state` must hold of the lease clients' keys: a lease granted whose
   * end applied nowhere still has its row, one whose end applied has none, and none of an ended
   * lease's keys is left, whatever its put's answer (a put applied before the end is deleted with
   * it, one after is refused); a key whose put was answered ok is there while its lease is, with the
   * value put. Throws a `SimViolation` naming the first that broke this. (Before, lease-attached
   * puts were judged by nothing: a lease's end that left its keys, or lost them early, passed.)
   */
  checkLeaseKeys(state: Pick<KvTable, "get">): void {
    for (const [lease, keys] of this.leaseKeys) {
      const endedMs = this.leaseEnds.get(lease);
      const row = leaseExists(state, lease);
      if (endedMs !== undefined && row) throw new SimViolation(`lease ${lease} ended at ${endedMs} ms, yet its row is in the converged state`);
      if (endedMs === undefined && !row) throw new SimViolation(`lease ${lease} was granted and its end applied nowhere, yet the converged state has no row of it`);
      for (const { key, okCallMs } of keys) {
        const stored = state.get(key);
        if (endedMs !== undefined && stored !== undefined) throw new SimViolation(`lease ${lease} ended at ${endedMs} ms, yet its key ${key} is in the converged state`);
        if (endedMs === undefined && okCallMs !== undefined && new TextDecoder().decode(stored?.value) !== `lease ${lease}`) {
          throw new SimViolation(`the put of ${key} attached to lease ${lease} was answered ok (begun at ${okCallMs} ms) and the lease has not ended, yet the converged state holds ${stored === undefined ? "no such key" : "another value"}`);
        }
        if (endedMs !== undefined && okCallMs !== undefined && okCallMs > endedMs) {
          throw new SimViolation(`the put of ${key} attached to lease ${lease}, begun at ${okCallMs} ms, was answered ok after the lease ended at ${endedMs} ms`);
        }
        this.stats.leaseKeysJudged++;
      }
    }
  }

  /** Per lease a client was granted: its TTL, and when each call it was answered ok for began (the grant, then keepalives). */
  private readonly leaseCalls = new Map<number, { readonly ttlMs: number; readonly okCallsMs: number[] }>();
  /** When each lease's expiry first applied on any server (simulated ms). */
  private readonly leaseExpiries = new Map<number, number>();

  /**
   * A client's lease call to node `id` (`grant` with a TTL, `keepalive` or `revoke` of a lease id,
   * or a `put` of a key attached to it):
   * the lease id granted, true for a keepalive or revoke answered ok, undefined otherwise (refused,
   * unknown, nobody there). What `checkLeases` judges is recorded as the answers come.
   */
  async leaseCall(
    id: NodeId,
    call: { readonly op: "grant"; readonly ttlMs: number } | { readonly op: "keepalive" | "revoke"; readonly lease: number } | { readonly op: "put"; readonly lease: number; readonly key: string },
  ): Promise<number | boolean | undefined> {
    const node = this.servers.get(id)?.node;
    if (node === undefined) return undefined;
    const callMs = this.nowMs;
    try {
      if (call.op === "grant") {
        const granted = await node.grantLease(call.ttlMs);
        this.leaseCalls.set(granted.id, { ttlMs: granted.ttlMs, okCallsMs: [callMs] });
        this.stats.leasesGranted++;
        return granted.id;
      }
      if (call.op === "keepalive") {
        await node.keepAliveLease(call.lease);
        this.leaseCalls.get(call.lease)?.okCallsMs.push(callMs);
        this.stats.leaseKeepalives++;
        return true;
      }
      if (call.op === "put") {
        // Judged whatever its answer, once the leases granted ok are known (`checkLeaseKeys`).
        const attached = { key: call.key } as { readonly key: string; okCallMs?: number };
        if (this.leaseCalls.has(call.lease)) {
          const keys = this.leaseKeys.get(call.lease) ?? [];
          keys.push(attached);
          this.leaseKeys.set(call.lease, keys);
        }
        await node.put(call.key, new TextEncoder().encode(`lease ${call.lease}`), { lease: call.lease });
        attached.okCallMs = callMs;
        return true;
      }
      await node.revokeLease(call.lease);
      this.stats.leasesRevoked++;
      return true;
    } catch (error: unknown) {
      // A bug: the run's next check throws it (the swarm's lease clients do not await this).
      if (!(error instanceof KvError)) this.raise(error);
      return undefined;
    }
  }

  /**
   * A lease lasts its TTL from the start of every call it was answered ok for (its grant, each
   * keepalive): a leader counts it down from when it took the call, by its own clock (which runs at
   * most `clockDriftMax` fast), and a new leader counts it from its election at its full TTL, which
   * came after any keepalive the old leader confirmed its leadership for. So its expiry applies no
   * sooner than TTL / (1 + clockDriftMax) after each such call began, and no call begun after its
   * expiry applied somewhere is answered ok. Throws a `SimViolation` naming the first lease that broke it.
   */
  checkLeases(): void {
    for (const [lease, calls] of this.leaseCalls) {
      const expiredMs = this.leaseExpiries.get(lease);
      if (expiredMs === undefined) continue;
      this.stats.leasesExpired++;
      for (const callMs of calls.okCallsMs) {
        if (callMs > expiredMs) throw new SimViolation(`lease ${lease} expired at ${expiredMs} ms, yet a call begun at ${callMs} ms was answered that it was alive`);
        const earliestMs = callMs + calls.ttlMs / (1 + this.opts.clockDriftMax);
        if (expiredMs < earliestMs) throw new SimViolation(`lease ${lease} (TTL ${calls.ttlMs} ms) expired at ${expiredMs} ms, before ${earliestMs.toFixed(1)} ms: a call begun at ${callMs} ms was answered that it was alive`);
      }
    }
  }

  /**
   * Steps server `id`'s wall clock by `byMs` (NTP stepping it, an operator setting it): leaders stamp
   * idempotent writes with it (src/node/session-stamps.ts), and a session must still live its window
   * of real time, whatever the stamps' clock did.
   */
  jumpWallClock(id: NodeId, byMs: number): void {
    const server = this.servers.get(id);
    if (server === undefined) return;
    server.wallSkewMs += byMs;
    this.stats.wallClockJumps++;
  }

  /** A failure outside any event (an operator's change gone wrong): the next check throws it. */
  raise(error: unknown): void {
    this.raised ??= error instanceof Error ? error : new Error(String(error));
  }

  /** Ids in the configuration the leader applied (undefined without a leader). */
  members(): NodeId[] | undefined {
    const leader = this.leader();
    const node = leader === undefined ? undefined : this.servers.get(leader)?.node;
    return node?.members().members.map((member) => member.id);
  }

  // ---- Running ------------------------------------------------------------------------------

  /** Runs the turns every running node asked for, and lets promises settle, until nothing is left. */
  private async settle(): Promise<void> {
    for (let round = 0; round < 100_000; round++) {
      let ran = false;
      for (const server of this.everyProcess()) {
        if (server.turns.length === 0 || !this.isRunning(server.address)) continue;
        const turns = server.turns;
        server.turns = [];
        for (const turn of turns) turn();
        ran = true;
      }
      // Every promise continuation (an fsync that finished, a client's answer) runs before this.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (!ran && !this.everyProcess().some((s) => s.turns.length > 0 && this.isRunning(s.address))) return;
    }
    throw new SimViolation("the node loops did not go quiet within 100000 rounds");
  }

  /** Runs events until simulated time `untilMs`, checking safety after each. */
  async runUntil(untilMs: number): Promise<void> {
    for (;;) {
      const next = this.events[0];
      if (next === undefined || next.atMs > untilMs) break;
      this.popEvent();
      if (next.cancelled) continue;
      this.nowMs = next.atMs;
      next.run();
      await this.settle();
      this.eventsRun++;
      this.traceHash = fnv1aMix(this.traceHash, `|${this.nowMs}`);
      this.checkSafety();
    }
    this.nowMs = Math.max(this.nowMs, untilMs);
  }

  /** Runs until `condition` holds or `budgetMs` of simulated time pass; returns whether it held. */
  async runUntilTrue(condition: () => boolean, budgetMs: number): Promise<boolean> {
    const deadline = this.nowMs + budgetMs;
    while (!condition()) {
      if (this.nowMs >= deadline) return false;
      await this.runUntil(Math.min(deadline, this.nowMs + this.opts.tickMs));
    }
    return true;
  }

  // ---- Clients ------------------------------------------------------------------------------

  /**
   * Starts one client operation at node `id` through the node API and records its answer in the
   * history when it comes: ok, refused (certainly no effect), or unknown (a timeout, or the node
   * stopped with the request in flight).
   *
   * With `retry`, a put or delete carries an idempotency key and, while its outcome is unknown, is
   * sent again under that key (to `retry.target()`, after `retry.pauseMs()`), up to `retry.attempts`
   * in all and not from `retry.until` on (the run's end), as the client library retries (src/client): one operation in the history, from the
   * first call to the last answer. A refusal after an unknown attempt leaves it unknown (the first
   * may still apply); an ok answers for all of them (from the session, if an earlier one applied).
   */
  callOperation(
    clientId: number,
    id: NodeId,
    kind: Operation["kind"],
    key: string,
    options: {
      consistency?: "linearizable" | "lease";
      ifVersion?: number;
      /** A delete sent as a delete by prefix of the key (no other key of the run may start with it); never with `ifVersion`. */
      byPrefix?: boolean;
      retry?: { attempts: number; target: () => NodeId; pauseMs: () => number; until: number };
    } = {},
  ): Promise<Operation> {
    const opId = ++this.operationSequence;
    const callMs = this.historyTime();
    const value = kind === "put" ? `c${clientId}.${opId}` : undefined;
    const ifVersion = kind === "get" ? undefined : options.ifVersion;
    const byPrefix = kind === "delete" && options.byPrefix === true;
    assert(!byPrefix || ifVersion === undefined, "a delete by prefix is never a compare-and-set");
    const retry = kind === "get" ? undefined : options.retry;
    const writeOptions = { ...(ifVersion === undefined ? {} : { ifVersion }), ...(retry === undefined ? {} : { idempotencyKey: `op${opId}` }) };
    let sent = false;
    const record = (outcome: Operation["outcome"], fields: Partial<Operation> = {}): Operation => {
      // Sent, and no longer in flight: `closeHistory` already listed it as unknown, so an answer
      // after that is not listed a second time (it could otherwise explain a write applied twice).
      const closed = sent && !this.inflight.delete(opId);
      const operation: Operation = {
        id: opId,
        clientId,
        kind,
        key,
        ...(value === undefined ? {} : { value }),
        ...(ifVersion === undefined ? {} : { ifVersion }),
        ...(byPrefix ? { byPrefix: true as const } : {}),
        callMs,
        ...(outcome === "unknown" ? {} : { returnMs: this.historyTime() }),
        outcome,
        ...fields,
      };
      if (closed) return operation;
      // An unknown outcome waits for the end of the run: the write may still take effect.
      if (outcome === "unknown") this.unknown.push(operation);
      else this.history.push(operation);
      return operation;
    };
    /** One call: its answer's fields, or the error's reading; undefined when nothing could be sent. */
    const attempt = (target: NodeId): Promise<{ outcome: Operation["outcome"]; fields: Partial<Operation> }> | undefined => {
      // A node's id, or the address of an older process of a re-added id (see `detach`).
      const node = this.processAt(target)?.node;
      if (node !== undefined && this.ghosts.has(target)) this.stats.olderProcessCalls++;
      // Connection refused: nothing was sent.
      if (node === undefined) return undefined;
      if (!sent) this.inflight.set(opId, { clientId, kind, key, ...(value === undefined ? {} : { value }), ...(ifVersion === undefined ? {} : { ifVersion }), callMs });
      sent = true;
      let call: Promise<Partial<Operation>>;
      try {
        if (kind === "put") call = node.put(key, new TextEncoder().encode(value), writeOptions).then((result) => ({ version: result.version }));
        else if (kind === "delete" && byPrefix) {
          // The prefix names this key alone: it deletes it, or finds nothing, as a delete would.
          call = node.deletePrefix(key, deletePrefixKeysMax, writeOptions).then((result) => {
            if (result.deleted > 1 || result.more) this.raise(new SimViolation(`a delete by prefix ${JSON.stringify(key)} deleted ${result.deleted} keys (more: ${result.more})`));
            return { deleted: result.deleted === 1, version: result.version };
          });
        } else if (kind === "delete") call = node.delete(key, writeOptions).then((result) => ({ deleted: result.deleted, version: result.version }));
        else {
          call = node
            .get(key, options.consistency ?? "linearizable")
            .then((found) => (found === undefined ? { output: null } : { output: new TextDecoder().decode(found.value), version: found.version }));
        }
      } catch (error: unknown) {
        call = Promise.reject(error);
      }
      return call.then(
        (fields) => ({ outcome: "ok" as const, fields }),
        (error: unknown) => {
          // A bug: the run's next check throws it (a rejection here would go unhandled, and the run on).
          if (!(error instanceof KvError)) this.raise(error);
          else if (error.code === "idempotency_key_reused") {
            // The same request under its own key: a node that calls it another is wrong.
            this.raise(new SimViolation(`node ${target} refused a retry of operation ${opId} as reusing its idempotency key: ${error.message}`));
          }
          // A compare-and-set refused where it applied read the key there (judged as a get of it).
          if (error instanceof KvError && error.code === "version_mismatch" && ifVersion !== undefined && error.details.version !== undefined) {
            return { outcome: "fail" as const, fields: { refusedAtVersion: error.details.version } };
          }
          // A read that failed took no effect either way.
          return { outcome: kind === "get" || !(error instanceof KvError) || isRefusal(error.code) ? ("fail" as const) : ("unknown" as const), fields: {} };
        },
      );
    };
    const finish = (outcome: Operation["outcome"], fields: Partial<Operation> = {}): Operation => {
      if (outcome === "ok" && kind !== "get") this.stats.acknowledgedWrites++;
      if (outcome === "ok" && byPrefix) this.stats.prefixDeletes++;
      if (fields.refusedAtVersion !== undefined) this.stats.refusedCompareAndSets++;
      return record(outcome, fields);
    };
    const first = attempt(id);
    if (first === undefined) return Promise.resolve(record("fail"));
    if (retry === undefined) return first.then((answer) => finish(answer.outcome, answer.fields));
    // Unknown once: every later attempt is a retry of something that may have applied.
    const again = (attemptsLeft: number): Promise<Operation> =>
      new Promise<void>((resolve) => this.at(retry.pauseMs(), resolve)).then(() => {
        // The clients stopped: no new request after the run (the checks take the state then as final).
        if (this.nowMs >= retry.until) return finish("unknown");
        const next = attempt(retry.target());
        if (next !== undefined) this.stats.retries++;
        if (next === undefined) return attemptsLeft > 1 ? again(attemptsLeft - 1) : finish("unknown");
        return next.then((answer) => (answer.outcome === "ok" ? finish("ok", answer.fields) : attemptsLeft > 1 ? again(attemptsLeft - 1) : finish("unknown")));
      });
    return first.then((answer) => (answer.outcome === "unknown" && retry.attempts > 1 ? again(retry.attempts - 1) : finish(answer.outcome, answer.fields)));
  }

  /** The whole history: answers, then writes whose outcome stayed unknown (reads still unanswered are dropped). */
  closeHistory(): Operation[] {
    for (const [opId, op] of this.inflight) {
      if (op.kind !== "get") this.unknown.push({ id: opId, ...op, outcome: "unknown" });
    }
    this.inflight.clear();
    return [...this.history, ...this.unknown.filter((op) => op.kind !== "get")].sort((a, b) => a.id - b.id);
  }

  /** The run's trace digest so far (see `traceHash`), as 8 hex digits. */
  traceDigest(): string {
    return this.traceHash.toString(16).padStart(8, "0");
  }

  leader(): NodeId | undefined {
    let best: { id: NodeId; term: number } | undefined;
    for (const server of this.servers.values()) {
      const status = server.node?.raftStatus();
      if (status?.role === "leader" && (best === undefined || status.term > best.term)) best = { id: server.id, term: status.term };
    }
    return best?.id;
  }

  // ---- Checkers -----------------------------------------------------------------------------

  /** Election safety (one leader per term) and log matching of what each node has committed. */
  private checkSafety(): void {
    if (this.raised !== undefined) throw this.raised;
    for (const server of this.everyProcess()) {
      const node = server.node;
      if (node === undefined) continue;
      const status = node.raftStatus();
      this.traceHash = fnv1aMixInts(this.traceHash, server.address, status.role.charCodeAt(0), status.term, status.commitIndex, status.appliedIndex, status.lastLogIndex);
      // A leadership counts once its term is on the leader's disk: before, it has done nothing (no
      // message leaves, kv-node.ts handleReady, and nothing commits without that fsync), and the only
      // voter, leading at once, may lead the same term again after a power loss, as etcd's would.
      if (status.role === "leader" && server.disk.durable().initialState().hardState.term >= status.term) {
        const other = this.leaderOfTerm.get(status.term);
        if (other !== undefined && (other.server !== server || other.incarnation !== server.incarnation)) {
          const life = (process: { readonly incarnation: number }) => `(life ${process.incarnation})`;
          throw new SimViolation(`election safety: ${this.processName(other.server.address)} ${life(other)} and ${this.processName(server.address)} ${life(server)} both lead term ${status.term}`);
        }
        this.leaderOfTerm.set(status.term, { server, incarnation: server.incarnation });
        const before = this.leaderCommit.get(server);
        const voters = node.members().members.filter((member) => member.role === "voter").map((member) => member.id);
        // The commit may have been counted under the configuration before a change this event applied.
        if (before !== undefined && before.term === status.term && status.commitIndex > before.commit) this.checkCommitDurable(server, status.commitIndex, [before.voters, voters]);
        this.leaderCommit.set(server, { term: status.term, commit: status.commitIndex, voters });
        // A leader that applied its own removal steps down at once (src/raft/raft.ts applyConfChange): applied as the node was told (a storage thread confirms later).
        if (!server.disk.membership().voters.includes(server.id)) {
          throw new SimViolation(`node ${server.id} leads term ${status.term} but is no voter of the configuration it applied`);
        }
      }
      // Each committed entry once per process: from its start, the last 64 applied are checked again
      // (every entry a node applies is compared as it applies, in the disk's `applied` hook).
      // Only as far as the disk says committed: the core commits entries it holds in memory, and
      // until their save goes through (a full disk refuses it) the disk may still hold the older
      // entries they replace (seed 230 read such an uncommitted term-1 entry as committed). That
      // bound holds because nothing is applied past the disk's commit (the loop saves a Ready
      // before it applies its entries): checked too.
      const storage = server.disk.contents();
      const diskCommit = Math.max(storage.initialState().hardState.commit, storage.snapshot().index);
      if (storage.appliedIndex() > diskCommit) throw new SimViolation(`node ${server.id} applied ${storage.appliedIndex()} past its disk's commit ${diskCommit}`);
      const from = Math.max(storage.firstIndex(), status.appliedIndex - 64, server.checkedIndex + 1, 1);
      const to = Math.min(status.commitIndex, storage.lastIndex(), diskCommit);
      if (from > to) continue;
      server.checkedIndex = to;
      for (const entry of storage.entries(from, to + 1, Number.POSITIVE_INFINITY)) this.agreeCommitted(server.id, entry);
      if (this.raised !== undefined) throw this.raised;
    }
  }

  /**
   * Every put and delete answered ok is the entry committed at the version its answer named. The
   * linearizability check judges the values reads saw, and reads cover only some writes: a write
   * acknowledged at a version another entry took, or never committed, could pass it (found in a
   * review: nothing tied an acknowledged write to the log).
   */
  checkAcknowledgedWrites(): void {
    for (const op of this.history) {
      if (op.outcome !== "ok" || op.version === undefined || (op.kind !== "put" && op.kind !== "delete")) continue;
      const identity = this.committed.get(op.version);
      const what = `${op.kind} #${op.id} of ${op.key}${op.kind === "put" ? ` = ${op.value}` : ""}, acknowledged at version ${op.version}`;
      if (identity === undefined) throw new SimViolation(`${what}: no entry was committed there`);
      const [, type, data] = identity.split(":");
      let command: Command | undefined;
      try {
        command = type === String(EntryType.Normal) ? decodeCommand(Buffer.from(data ?? "", "base64")) : undefined;
      } catch {
        command = undefined; // a lease command, or no command: not this write either
      }
      const holds =
        op.kind === "put"
          ? command?.op === "put" && command.key === op.key && new TextDecoder().decode(command.value) === op.value
          : (command?.op === "delete" && command.key === op.key) || (op.byPrefix === true && command?.op === "delete-prefix" && command.prefix === op.key);
      if (!holds) throw new SimViolation(`${what}: the entry committed there is another (${command === undefined ? `entry type ${type}` : `${command.op}`})`);
    }
  }

  /** State machine safety: every node that commits or applies an entry at an index has the same one there (compared byte for byte). */
  private agreeCommitted(id: NodeId, entry: Entry): void {
    const identity = `${entry.term}:${entry.type}:${Buffer.from(entry.data.buffer, entry.data.byteOffset, entry.data.byteLength).toString("base64")}`;
    const agreed = this.committed.get(entry.index);
    if (agreed === undefined) this.committed.set(entry.index, identity);
    else if (agreed !== identity) this.raise(new SimViolation(`state machine safety: node ${id} committed another entry at ${entry.index}`));
  }

  /**
   * What leaves a node promises its disk: a granted vote or a candidate's request (§5.2: one vote per
   * term, across restarts) needs the node's fsynced hard state to hold that vote, or a later term;
   * any other message but a pre-vote needs its term there. Judged against the hard state read once.
   */
  private checkVotesDurable(from: number, messages: readonly Message[]): void {
    if (messages.length === 0) return;
    const hard = this.processAt(from)?.disk.durable().initialState().hardState;
    if (hard === undefined) return;
    for (const message of messages) {
      switch (message.type) {
        case "pre-vote":
        case "pre-vote-response":
          // A pre-vote carries a term its sender has not taken.
          continue;
        case "vote":
          // A candidate's request carries its own vote in its term: on disk before it leaves, or a
          // power loss lets it campaign in that term again, and lead it twice (found in a review: no
          // check saw it, with waitsForDisk the only guard).
          if (hard.term > message.term || (hard.term === message.term && hard.vote === message.from)) continue;
          this.raise(new SimViolation(`vote durability: ${this.processName(from)} asked for term-${message.term} votes with only term ${hard.term} vote ${hard.vote} on disk`));
          continue;
        case "vote-response":
          if (!message.granted || hard.term > message.term || (hard.term === message.term && hard.vote === message.to)) continue;
          this.raise(new SimViolation(`vote durability: ${this.processName(from)} granted its term-${message.term} vote to ${message.to} with only term ${hard.term} vote ${hard.vote} on disk`));
          continue;
        default:
          // No other message leaves before its node's term is on disk (kv-node.ts handleReady, etcd's
          // Ready contract). Without this the swarm could not see the hold at all: it never runs a
          // single voter, where the hold matters (found in a review: with the hold off, seeds 1-30 passed).
          if (message.term <= hard.term) continue;
          this.raise(new SimViolation(`term durability: ${this.processName(from)} sent ${message.type} of term ${message.term} to ${message.to} with only term ${hard.term} on disk`));
      }
    }
  }

  /**
   * A leader that advanced its commit index to `index` in this event must hold a quorum of its
   * voters whose fsynced log (or fsynced snapshot) has the leader's entry there (§5.4: a committed
   * entry survives any minority of power losses). Checked from the disks, so a commit that counted
   * an ack sent before its fsync, or a replica that is not a voter, is caught when it happens, not
   * only in the rare runs where a power loss and an election then lose the entry.
   */
  private checkCommitDurable(leader: SimServer, index: number, configurations: readonly (readonly NodeId[])[]): void {
    const written = leader.disk.contents();
    if (index <= written.snapshot().index || index > written.lastIndex()) return;
    const term = written.term(index);
    const holds = (id: NodeId): boolean => {
      const durable = this.servers.get(id)?.disk.durable();
      if (durable === undefined) return false;
      if (index <= durable.snapshot().index) return true;
      return index <= durable.lastIndex() && durable.term(index) === term;
    };
    if (configurations.some((voters) => voters.filter(holds).length >= Math.floor(voters.length / 2) + 1)) return;
    const shown = configurations.map((voters) => `[${voters.filter(holds).join(",")}] of [${voters.join(",")}]`).join(" / ");
    throw new SimViolation(`commit durability: leader ${this.processName(leader.address)} committed ${index} (term ${term}) but only voters ${shown} hold it on disk`);
  }

  /**
   * Heals every fault, restarts every node, and requires convergence within `budgetMs`: one
   * leader, every node applied up to its commit index, one state machine everywhere. Then reads
   * every key back through the leader into the history, and judges the whole history.
   */
  async healAndCheck(keys: readonly string[], budgetMs: number): Promise<void> {
    this.network.heal();
    this.network.faults = { lossRate: 0, delayMsMin: 0, delayMsMax: 1 };
    for (const server of this.everyProcess()) {
      server.disk.full = false;
      server.stalledUntilMs = Math.min(server.stalledUntilMs, this.nowMs);
      // Its stall cut short: what waited for its end is handed over now.
      if (server.deferred.length > 0) this.drainDeferred(server);
    }
    for (const id of this.servers.keys()) this.restart(id);
    // Older processes of re-added ids reach their peers too (and are refused, see `detach`).
    for (const address of this.ghosts.keys()) this.releaseGhost(address);
    // A fresh write through the leader: it commits only once a leader of the healed cluster leads.
    let finalWrite: "none" | "sent" | "ok" = "none";
    // The members as the leader applied them: servers removed (running or not) no longer count.
    let members: SimServer[] = [];
    // A cluster that stops moving is failed early: one whose replication is stuck for good (a bug)
    // could otherwise run the whole budget, minutes of real time (found in review).
    let progress = "";
    let progressSinceMs = this.nowMs;
    let stuck = false;
    const converged = await this.runUntilTrue(() => {
      const statuses = [...this.servers.values()].map((server) => server.node?.raftStatus());
      // An image streaming counts as moving: at the simulator's 256-byte chunks, a long run's image
      // took over 20,000 chunks, past healStuckMs, while no index moved (long seed 300041).
      const now = `${statuses.map((r) => `${r?.commitIndex}/${r?.appliedIndex}/${r?.lastLogIndex}/${r?.term}`).join(",")} ${[...this.servers.values()].map((server) => server.disk.chunksStaged).join(",")} ${finalWrite}`;
      if (now !== progress) {
        progress = now;
        progressSinceMs = this.nowMs;
      } else if (this.nowMs - progressSinceMs > healStuckMs) {
        stuck = true;
        return true;
      }
      const leader = this.leader();
      if (leader === undefined || this.operatorBusy()) return false;
      if (finalWrite === "none") {
        finalWrite = "sent";
        void this.callOperation(0, leader, "put", keys[0] as string).then((operation) => {
          finalWrite = operation.outcome === "ok" ? "ok" : "none"; // refused or unknown: again, on whoever leads then
        });
        return false;
      }
      const caughtUp = this.membersCaughtUp();
      if (caughtUp === undefined) return false;
      members = caughtUp;
      return finalWrite === "ok";
    }, budgetMs);
    if (stuck) throw new SimViolation(`the healed cluster stopped moving for ${healStuckMs} ms without converging\n${this.describe()}`);
    if (!converged) throw new SimViolation(`the healed cluster did not converge within ${budgetMs} ms${this.operatorBusy() ? " (a membership change still under way)" : ""}\n${this.describe()}`);
    // A server whose removal was answered is counted no more.
    for (const server of this.servers.values()) {
      if (server.lifecycle === "retired" && members.includes(server)) throw new SimViolation(`node ${server.id} was removed (the leader answered so) but is a member again`);
    }
    // Every row, the reserved ones (leases, sessions) too, hashed as GET /hash does (src/kv/state-hash.ts).
    const images = members.map((s) => `${s.id}: ${stateHashOf(s.disk.contents()).hash}`);
    if (new Set(images.map((image) => image.slice(image.indexOf(" ") + 1))).size !== 1) {
      throw new SimViolation(`state machines differ after convergence (${images.join(", ")})\n${this.describe()}`);
    }
    const [first] = members;
    if (first !== undefined) this.checkLeaseKeys(first.disk.contents());
    // Each key read back until a read is answered: a refused one would leave the last writes of
    // its key with no read after them for the check to judge.
    for (const key of keys) {
      let read: Operation | undefined;
      for (let attempt = 0; read?.outcome !== "ok"; attempt++) {
        if (attempt === finalReadAttemptsMax) throw new SimViolation(`no final read of ${key} was answered in ${finalReadAttemptsMax} tries (last: ${read?.outcome})\n${this.describe()}`);
        read = await this.awaitAnswer(this.callOperation(0, this.leader() ?? (members[0] as SimServer).id, "get", key), 5_000);
      }
    }
    this.checkAcknowledgedWrites();
    // A step budget, not the wall clock's: the verdict must not depend on the machine's load, or a
    // seed would not replay (found in review).
    const verdict = historyViolation(checkLinearizable(this.closeHistory(), { searchStepsMax: linearizabilityStepsMax, nowMs: () => 0 }));
    if (verdict !== undefined) throw new SimViolation(verdict);
  }

  /**
   * The members as the leader applied them, once a leader leads and every one of them applied its
   * commit index (they then hold one state machine); undefined until then.
   */
  membersCaughtUp(): SimServer[] | undefined {
    const leader = this.leader();
    if (leader === undefined) return undefined;
    const commit = this.servers.get(leader)?.node?.raftStatus().commitIndex ?? 0;
    const members = (this.members() ?? []).map((id) => this.servers.get(id) as SimServer);
    return members.every((s) => s !== undefined && s.node?.raftStatus().appliedIndex === commit) ? members : undefined;
  }

  /**
   * The time an operation is called or answered, as the history records it: the simulated ms, plus
   * a millionth of a ms for each earlier record in that ms. Events of one ms happened in the order
   * the simulation ran them, and the checker orders a call before an answer of the same time
   * (right for clocks that cannot tell them apart): a client's next operation, called in the ms its
   * previous one was answered, counted as concurrent with it, and a stale read there was accepted.
   */
  historyTime(): number {
    if (this.nowMs !== this.historyTimeMs) {
      this.historyTimeMs = this.nowMs;
      this.historyTimeStep = 0;
    }
    this.historyTimeStep++;
    return this.nowMs + this.historyTimeStep * 1e-6;
  }

  /** Runs the simulation until `operation` is answered (within `budgetMs` of simulated time), and returns its answer (an operation's record). */
  async awaitAnswer<T>(operation: Promise<T>, budgetMs: number): Promise<T> {
    let answer: { readonly value: T } | undefined;
    void operation.then((value) => (answer = { value }));
    if (!(await this.runUntilTrue(() => answer !== undefined, budgetMs)) || answer === undefined) throw new SimViolation(`an operation was not answered within ${budgetMs} ms`);
    return answer.value;
  }

  /** What a process is called in reports: `node N`, or `node N's older process (at A)` (see `detach`). */
  private processName(address: number): string {
    const ghost = this.ghosts.get(address);
    return ghost === undefined ? `node ${address}` : `node ${ghost.id}'s older process (at ${address})`;
  }

  /** One line per node, for failure reports. */
  describe(): string {
    return this.everyProcess()
      .map((server) => {
        const status = server.node?.status();
        const name = this.processName(server.address);
        if (status === undefined) return `${name}: ${server.lifecycle === "member" ? "down" : server.lifecycle}, applied ${server.disk.appliedIndex()}`;
        const stalled = this.nowMs < server.stalledUntilMs ? " stalled" : "";
        return `${name}: ${status.role}${stalled} term ${status.term} leader ${status.leaderId} commit ${status.commitIndex} applied ${status.appliedIndex} last ${status.lastLogIndex} first ${status.firstLogIndex}${status.votesHeld === true ? " votes-held" : ""} members ${status.members.map((m) => `${m.id}${m.role === "learner" ? "L" : ""}`).join(",")} last-term ${server.disk.contents().term(status.lastLogIndex) ?? "?"}${server.disk.full ? " disk-full" : ""}`;
      })
      .join("\n");
  }

  /** Stops every process (the end of a run). */
  stop(): void {
    for (const server of this.everyProcess()) {
      server.incarnation++;
      server.node?.stop();
      server.node = undefined;
    }
    this.events.length = 0;
  }
}

/** Addresses of older processes (see `NodeSim.detach`): past every node id a run uses. */
const ghostAddressFirst = 1_000_001;

/** Tries of one membership change by the operator, and the wait between two (simulated ms). */
const operatorAttemptsMax = 100_000;
const operatorRetryMs = 100;

/** Where the simulated network reaches node `id`'s peer service, and its client API. */
function peerUrlOf(id: NodeId): string {
  return `http://peer-${id}.sim.invalid`;
}

function httpUrlOf(id: NodeId): string {
  return `http://node-${id}.sim.invalid`;
}

function before(a: SimEvent, b: SimEvent): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.sequence < b.sequence);
}

/**
 * Simulated ms a healed cluster may go without any node's commit, applied or last index or term
 * moving before it counts as stuck. A leader gives up on a snapshot that was lost after
 * snapshotHeartbeatsMax (100) heartbeat rounds, up to 5 s each time, and a heal can lose a couple:
 * seed 74 (with the bank's retries) sat still for 10-20 s and then converged.
 */
const healStuckMs = 30_000;

/** Search steps the final linearizability check may take (the swarm's histories need far fewer). */
const linearizabilityStepsMax = 20_000_000;

/** How many times the final phase asks for a key before it calls the run broken. */
const finalReadAttemptsMax = 20;

/**
 * Why a history's verdict fails a run, or undefined when it is linearizable. A check that ran out of
 * its budget (`ok: "unknown"`) fails it too, as docs/chaos.md says: `!result.ok` let it pass.
 */
export function historyViolation(result: CheckResult): string | undefined {
  if (result.ok === true) return undefined;
  if (result.ok === "unknown") return `the linearizability check ran out of its budget, so the history is unchecked: ${result.reason}${result.key === undefined ? "" : ` (key ${result.key})`}`;
  return `not linearizable: ${JSON.stringify(result).slice(0, 2_000)}`;
}

/** The state hash of a storage's whole image (src/kv/state-hash.ts), read as `GET /hash` reads it. */
function stateHashOf(storage: { openImage(): KvImageReader }): StateHash {
  const image = storage.openImage();
  try {
    const hasher = new StateHasher();
    for (let rows = image.next(1 << 20); rows.length > 0; rows = image.next(1 << 20)) for (const row of rows) hasher.add(row);
    return hasher.finish(image.metadata);
  } finally {
    image.close();
  }
}
