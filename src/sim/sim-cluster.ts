import { assert } from "../lib/assert.ts";
import { createPrng, type Prng } from "../lib/prng.ts";
import { MemoryStorage } from "../raft/memory-storage.ts";
import { defaultRaftLimits } from "../raft/raft.ts";
import { RawNode } from "../raft/raw-node.ts";
import {
  EntryType,
  ProposalRefusedError,
  type ConfChange,
  type ConfState,
  type Entry,
  type Message,
  type NodeId,
  type ReadFailure,
  type ReadState,
  waitsForDisk,
} from "../raft/types.ts";
import { SimNetwork } from "./sim-network.ts";

/** A broken Raft guarantee found by the simulator's checkers. */
export class SafetyViolation extends Error {
  override name = "SafetyViolation";
}

export interface SimClusterOptions {
  readonly nodeCount: number;
  readonly seed: number;
  readonly electionTicks?: number;
  readonly heartbeatTicks?: number;
  readonly inflightMessagesMax?: number;
  readonly appendBytesMax?: number;
  readonly preVote?: boolean;
  readonly checkQuorum?: boolean;
  /**
   * Disks as the node's loop uses them: a Ready is written at once but durable only at a later
   * fsync (1 to 3 ticks on), which covers everything written before it began. Until then the
   * messages that Ready produced wait (a vote or an ack promises what is on disk), a leader's own
   * copy does not count toward commit, and a power-loss crash loses what was written since the
   * last fsync. Default false: every Ready is durable once saved.
   */
  readonly asyncStorage?: boolean;
  /**
   * Clock drift: each node's clock runs slow by a rate drawn in [0, clockDriftMax] (it misses that
   * share of ticks), within the drift bound leases assume (`RaftConfig.leaseDriftTicks`: a fifth
   * of an election timeout). Default 0: every clock ticks at the same rate.
   */
  readonly clockDriftMax?: number;
}

/** Where in carrying out a Ready a simulated crash strikes. */
export type CrashPoint = "before-persist" | "after-persist" | "after-send";

/** What survives a power loss in async-storage mode: the state as of the last finished fsync. */
interface DurableImage {
  readonly storage: MemoryStorage;
  readonly applied: Entry[];
  readonly config: ConfState;
  /** The last entry written as of the image (reported to the core once the fsync finishes). */
  readonly lastEntry: { index: number; term: number } | undefined;
}

interface SimNode {
  readonly id: NodeId;
  /** What is on disk: survives crashes. */
  storage: MemoryStorage;
  /** The state machine: applied entries in order (durable, applied in the same step as the index). */
  applied: Entry[];
  /** The configuration as of `applied` (durable with it). */
  config: ConfState;
  /** The running process, or undefined while crashed. */
  raw: RawNode | undefined;
  readStates: ReadState[];
  readFailures: ReadFailure[];
  // ---- Async-storage mode (see SimClusterOptions.asyncStorage) ----
  /** Readies written so far, and how many of them the last finished fsync covered. */
  writtenReadies: number;
  durableReadies: number;
  durable: DurableImage;
  /** The fsync in flight: the image it will make durable and the tick it finishes at. */
  syncing: { readies: number; image: DurableImage; doneTick: number } | undefined;
  /** Messages waiting for the fsync that covers the Ready that produced them. */
  held: { message: Message; readies: number }[];
  lastEntry: { index: number; term: number } | undefined;
}

interface Proposal {
  readonly index: number;
  readonly term: number;
  readonly data: Uint8Array;
}

/**
 * A whole cluster of Raft cores in one process on a simulated network and disk, driven tick by tick
 * from one seed. After every step it checks the paper's safety properties (Figure 3): election safety,
 * log matching, leader completeness and state machine safety; any breach throws SafetyViolation.
 */
export class SimCluster {
  readonly ids: NodeId[];
  readonly network: SimNetwork;
  readonly prng: Prng;
  /** Draws fsync delays and what a crash keeps (async-storage mode), apart from `prng`. */
  private readonly diskPrng: Prng;
  /** Crashes in async-storage mode that lost writes not yet fsynced: proof the path was exercised. */
  powerLosses = 0;
  /** Async-storage mode: how many ticks node `id`'s next fsync takes (default: 1 to 3, drawn). */
  fsyncTicksOf: ((id: NodeId) => number) | undefined;
  nowTick = 0;
  /** Draws clock drift (apart from `prng`, so a seed's other draws stay as they were). */
  private readonly clockPrng: Prng;
  /** Each node's share of ticks its clock misses (its drift). */
  private readonly tickSkipRate = new Map<NodeId, number>();
  /** Stalled processes (GC, a slow disk call, SIGSTOP): until which tick, and what they missed. */
  private readonly stalls = new Map<NodeId, { untilTick: number; missedTicks: number; inbox: Message[] }>();
  /** Stalls that ended: proof the path was exercised. */
  stallsEnded = 0;
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly opts: Required<SimClusterOptions>;
  /** Crash injection: consulted at each point of each Ready; returns true to crash there. */
  crashHook: ((id: NodeId, point: CrashPoint) => boolean) | undefined;

  // ---- Checker state ----
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** (index, term) → the term before it and the data: two logs that share one share the prefix. */
  private readonly entryIdentity = new Map<string, { prevTerm: number; data: Uint8Array }>();
  /** index → the entry every state machine applies there. */
  private readonly appliedAt = new Map<number, Entry>();
  /**
   * index → a term by which the entry there was committed: the term of the first node seen to apply
   * it (its commit came from a leader of that term or an earlier one). Leader completeness requires
   * the entry of every leader of a later term.
   */
  private readonly committedBy = new Map<number, number>();
  /** Proposals acknowledged to a client: applied on the leader that took them. */
  readonly acknowledged: Proposal[] = [];
  private readonly pending = new Map<NodeId, Proposal[]>();
  private proposalSequence = 0;
  /** State machine images staged for InstallSnapshot, by image id (the transport's job in a real node). */
  private readonly images = new Map<string, Entry[]>();
  private imageSequence = 0;
  /** Snapshots installed by followers: proof the path was exercised. */
  snapshotsInstalled = 0;
  /** Servers whose removal some state machine applied: they are shut down at heal time. */
  readonly removed = new Set<NodeId>();
  /** Read context → the highest acknowledged write index when the read began. */
  private readonly readRequired = new Map<string, number>();
  /** Reads answered (by ReadIndex or lease), for tests that want proof reads were exercised. */
  readsServed = 0;
  /** Membership changes applied on some node, by kind: proof the path was exercised. */
  confChangesProposed = 0;

  constructor(options: SimClusterOptions) {
    this.opts = {
      electionTicks: 10,
      heartbeatTicks: 1,
      inflightMessagesMax: defaultRaftLimits.inflightMessagesMax,
      appendBytesMax: defaultRaftLimits.appendBytesMax,
      preVote: defaultRaftLimits.preVote,
      checkQuorum: defaultRaftLimits.checkQuorum,
      asyncStorage: false,
      clockDriftMax: 0,
      ...options,
    };
    this.clockPrng = createPrng(options.seed ^ 0xc10c);
    this.prng = createPrng(options.seed);
    this.diskPrng = createPrng(options.seed ^ 0xd15c);
    this.network = new SimNetwork(createPrng(options.seed ^ 0x5eed));
    this.ids = Array.from({ length: options.nodeCount }, (_, i) => i + 1);
    const initial: ConfState = { voters: this.ids.slice(), learners: [] };
    for (const id of this.ids) this.createNode(id, initial);
    if (this.opts.clockDriftMax > 0) for (const id of this.ids) this.tickSkipRate.set(id, this.clockPrng.next() * this.opts.clockDriftMax);
  }

  private createNode(id: NodeId, config: ConfState): void {
    const storage = new MemoryStorage(config.voters, config.learners);
    const node: SimNode = {
      id,
      storage,
      applied: [],
      config,
      raw: undefined,
      readStates: [],
      readFailures: [],
      writtenReadies: 0,
      durableReadies: 0,
      durable: { storage: storage.clone(), applied: [], config, lastEntry: undefined },
      syncing: undefined,
      held: [],
      lastEntry: undefined,
    };
    this.nodes.set(id, node);
    this.start(node);
  }

  private start(node: SimNode): void {
    node.storage.snapshotSource = () => {
      const index = node.applied.length;
      const term = node.raw?.raft.log.term(index);
      return term === undefined ? undefined : { index, term, voters: node.config.voters, learners: node.config.learners };
    };
    node.raw = new RawNode({
      id: node.id,
      storage: node.storage,
      electionTicks: this.opts.electionTicks,
      heartbeatTicks: this.opts.heartbeatTicks,
      prng: createPrng(this.opts.seed * 31 + node.id * 7919 + this.nowTick),
      applied: node.applied.length,
      appendBytesMax: this.opts.appendBytesMax,
      inflightMessagesMax: this.opts.inflightMessagesMax,
      uncommittedEntriesMax: defaultRaftLimits.uncommittedEntriesMax,
      committedBytesMax: defaultRaftLimits.committedBytesMax,
      preVote: this.opts.preVote,
      checkQuorum: this.opts.checkQuorum,
    });
    node.readStates = [];
    node.readFailures = [];
  }

  private node(id: NodeId): SimNode {
    const node = this.nodes.get(id);
    assert(node !== undefined, `no node ${id}`);
    return node;
  }

  raw(id: NodeId): RawNode | undefined {
    return this.node(id).raw;
  }

  isUp(id: NodeId): boolean {
    return this.node(id).raw !== undefined;
  }

  // ---- Faults -------------------------------------------------------------------------------

  /**
   * Kills the process: what it had not persisted is gone, and so are its in-flight proposals. In
   * async-storage mode half the crashes are power losses, which also lose every write since the
   * last finished fsync (the log, the state machine and its configuration roll back together, as
   * SQLite's WAL recovers a prefix of its commits); the others keep them, as the page cache does.
   * `powerLoss` decides instead of the draw.
   */
  crash(id: NodeId, powerLoss?: boolean): void {
    const node = this.node(id);
    if (node.raw === undefined) return;
    node.raw = undefined;
    this.pending.delete(id);
    this.network.dropTo(id);
    this.stalls.delete(id);
    if (!this.opts.asyncStorage) return;
    node.held = [];
    node.syncing = undefined;
    if (node.writtenReadies > node.durableReadies && (powerLoss ?? this.diskPrng.chance(0.5))) {
      this.powerLosses++;
      node.storage = node.durable.storage.clone();
      node.applied = node.durable.applied.slice();
      node.config = node.durable.config;
    }
    this.markDurable(node);
  }

  /** Everything written so far is on disk (an fsync finished, or a crash kept it all). */
  private markDurable(node: SimNode): void {
    node.durable = this.imageOf(node);
    node.durableReadies = node.writtenReadies;
  }

  private imageOf(node: SimNode): DurableImage {
    return { storage: node.storage.clone(), applied: node.applied.slice(), config: node.config, lastEntry: node.lastEntry };
  }

  /**
   * Async-storage mode, once per tick and node: finishes the fsync in flight when its tick has
   * come (its messages leave, a leader counts its own copy), and starts one over what was written
   * since, if anything was.
   */
  private runDisk(node: SimNode): void {
    const raw = node.raw;
    if (raw === undefined) return;
    const syncing = node.syncing;
    if (syncing !== undefined && this.nowTick >= syncing.doneTick) {
      node.syncing = undefined;
      if (syncing.readies > node.durableReadies) {
        node.durable = syncing.image;
        node.durableReadies = syncing.readies;
      }
      const released = node.held.filter((held) => held.readies <= node.durableReadies);
      node.held = node.held.filter((held) => held.readies > node.durableReadies);
      for (const held of released) this.send(held.message);
      if (syncing.image.lastEntry !== undefined) raw.persisted(syncing.image.lastEntry.index, syncing.image.lastEntry.term);
      this.process(node.id);
    }
    if (node.syncing === undefined && node.writtenReadies > node.durableReadies) {
      node.syncing = { readies: node.writtenReadies, image: this.imageOf(node), doneTick: this.nowTick + (this.fsyncTicksOf?.(node.id) ?? this.diskPrng.intInclusive(1, 3)) };
    }
  }

  /** Restarts a crashed node from what its disk holds. */
  restart(id: NodeId): void {
    const node = this.node(id);
    if (node.raw !== undefined) return;
    this.start(node);
  }

  /** Cuts a node off from every other (its process keeps running). */
  disconnect(id: NodeId): void {
    this.network.isolate(id, this.ids);
  }

  // ---- Driving ------------------------------------------------------------------------------

  /**
   * Stalls node `id`'s process for `ticks` (as GC, a slow disk call or SIGSTOP would): its clock
   * runs on, but it ticks nothing and handles nothing until the stall ends. Then, as the node loop
   * does (`KvNode.catchUpClock`), its lease clock makes up the ticks it missed (`RawNode.elapse`)
   * before it handles what arrived meanwhile.
   */
  stall(id: NodeId, ticks: number): void {
    if (this.node(id).raw === undefined) return;
    const stall = this.stalls.get(id);
    if (stall !== undefined) stall.untilTick = Math.max(stall.untilTick, this.nowTick + ticks);
    else this.stalls.set(id, { untilTick: this.nowTick + ticks, missedTicks: 0, inbox: [] });
  }

  isStalled(id: NodeId): boolean {
    return this.stalls.has(id);
  }

  private endStall(id: NodeId): void {
    const stall = this.stalls.get(id);
    if (stall === undefined) return;
    this.stalls.delete(id);
    this.stallsEnded++;
    const raw = this.node(id).raw;
    if (raw === undefined) return;
    raw.elapse(stall.missedTicks);
    for (const message of stall.inbox) {
      if (this.node(id).raw === undefined) return;
      this.node(id).raw!.step(message);
      this.process(id);
    }
  }

  /** One tick of the clock: every live node ticks, then messages due are delivered until quiet. */
  tick(): void {
    this.nowTick++;
    for (const [id, stall] of [...this.stalls]) if (this.nowTick >= stall.untilTick) this.endStall(id);
    if (this.opts.asyncStorage) for (const id of this.ids) if (!this.stalls.has(id)) this.runDisk(this.node(id));
    for (const id of this.ids) {
      const raw = this.node(id).raw;
      if (raw === undefined) continue;
      const stall = this.stalls.get(id);
      if (stall !== undefined) {
        stall.missedTicks++;
        continue;
      }
      const skipRate = this.tickSkipRate.get(id) ?? 0;
      if (skipRate > 0 && this.clockPrng.chance(skipRate)) continue; // a slow clock: this tick is not here yet
      raw.tick();
      this.process(id);
    }
    this.deliver();
  }

  /** Delivers every message due now, and what that provokes with no delay, until nothing is due. */
  deliver(): void {
    for (let round = 0; round < 10_000; round++) {
      const due = this.network.due(this.nowTick);
      if (due.length === 0) return;
      for (const message of due) {
        const raw = this.node(message.to).raw;
        if (raw === undefined) continue;
        const stall = this.stalls.get(message.to);
        if (stall !== undefined) {
          stall.inbox.push(message); // its socket holds it until the process runs again
          continue;
        }
        raw.step(message);
        this.process(message.to);
      }
    }
    throw new SafetyViolation("message storm: delivery did not quiesce within 10000 rounds");
  }

  runTicks(count: number): void {
    for (let i = 0; i < count; i++) this.tick();
  }

  /** Ticks until `condition` holds; returns false if `ticksMax` pass first. */
  tickUntil(condition: () => boolean, ticksMax: number): boolean {
    for (let i = 0; i < ticksMax; i++) {
      if (condition()) return true;
      this.tick();
    }
    return condition();
  }

  /** Carries out every Ready of one node: persist, send, apply, advance (with crash points). */
  process(id: NodeId): void {
    const node = this.node(id);
    for (;;) {
      const raw = node.raw;
      if (raw === undefined || !raw.hasReady()) return;
      const ready = raw.ready();
      // As the node does: a leader's appends and heartbeats leave before its own disk write.
      const early = ready.messages.filter((m) => m.type === "append" || m.type === "heartbeat");
      const late = ready.messages.filter((m) => m.type !== "append" && m.type !== "heartbeat");
      for (const message of early) this.send(message);
      if (this.crashHook?.(id, "before-persist")) return this.crash(id);
      if (ready.snapshot !== undefined) {
        this.installSnapshot(node, ready.snapshot.metadata.index, ready.snapshot.imageId);
        node.config = { voters: ready.snapshot.metadata.voters, learners: ready.snapshot.metadata.learners ?? [] };
      }
      if (ready.snapshot !== undefined) node.storage.installSnapshot(ready.snapshot.metadata);
      this.checkAppend(node, ready.entries);
      node.storage.save(ready.hardState, ready.entries, ready.mustSync);
      const async = this.opts.asyncStorage;
      if (async) {
        // As the node counts them: a Ready that changed only the commit index promises nothing new.
        if (ready.mustSync) node.writtenReadies++;
        const lastEntry = ready.entries[ready.entries.length - 1];
        if (lastEntry !== undefined) node.lastEntry = { index: lastEntry.index, term: lastEntry.term };
      }
      if (ready.softState?.role === "leader") this.checkNewLeader(node);
      if (this.crashHook?.(id, "after-persist")) return this.crash(id);
      for (const each of late) {
        const message = each.type === "snapshot" ? this.stageImage(node, each) : each;
        // What the disk does not hold yet must not be promised: such a message waits for the fsync.
        if (async && node.durableReadies < node.writtenReadies && waitsForDisk(message)) node.held.push({ message, readies: node.writtenReadies });
        else this.send(message);
      }
      if (this.crashHook?.(id, "after-send")) return this.crash(id);
      for (const entry of ready.committedEntries) this.apply(node, entry);
      for (const state of ready.readStates) {
        const required = this.readRequired.get(state.readContext) ?? 0;
        if (state.index < required) {
          throw new SafetyViolation(`stale read: node ${id} got read index ${state.index} for ${state.readContext}, but ${required} was acknowledged before it began`);
        }
        this.readsServed++;
      }
      node.readStates.push(...ready.readStates);
      node.readFailures.push(...ready.readFailures);
      raw.advance(ready, !async);
      this.checkLeaders();
    }
  }

  /** Leader side: stage the image the snapshot message names (a real transport streams it in chunks). */
  private stageImage(node: SimNode, message: Extract<Message, { type: "snapshot" }>): Message {
    const index = message.snapshot.index;
    assert(node.applied.length >= index, `node ${node.id} sends a snapshot at ${index} past its applied ${node.applied.length}`);
    const imageId = `${node.id}.${++this.imageSequence}`;
    this.images.set(imageId, node.applied.slice(0, index));
    return { ...message, imageId };
  }

  /** Follower side: the image replaces the state machine; it must agree with everything applied anywhere. */
  private installSnapshot(node: SimNode, index: number, imageId: string): void {
    const image = this.images.get(imageId);
    assert(image !== undefined && image.length === index, `no staged image ${imageId} at ${index}`);
    for (const entry of image) {
      const agreed = this.appliedAt.get(entry.index);
      if (agreed !== undefined && (agreed.term !== entry.term || !bytesEqual(agreed.data, entry.data))) {
        throw new SafetyViolation(`state machine safety: snapshot ${imageId} disagrees at ${entry.index}`);
      }
      if (agreed === undefined) {
        this.appliedAt.set(entry.index, entry);
        this.committedBy.set(entry.index, node.raw?.raft.term ?? Number.POSITIVE_INFINITY);
      }
    }
    node.applied = image.slice();
    this.snapshotsInstalled++;
    const waiting = this.pending.get(node.id);
    if (waiting !== undefined) this.pending.set(node.id, waiting.filter((p) => p.index > index));
  }

  /** Compacts node `id`'s log up to `index` (at most what it applied): the state machine is its snapshot. */
  compact(id: NodeId, index: number): void {
    const node = this.node(id);
    if (node.raw === undefined) return;
    node.storage.compact(Math.min(index, node.applied.length, node.storage.lastIndex()));
  }

  private send(message: Message): void {
    this.network.send(message, this.nowTick);
  }

  private apply(node: SimNode, entry: Entry): void {
    assert(entry.index === node.applied.length + 1, `node ${node.id} applies ${entry.index} after ${node.applied.length}`);
    const agreed = this.appliedAt.get(entry.index);
    if (agreed === undefined) {
      this.appliedAt.set(entry.index, entry);
      this.committedBy.set(entry.index, node.raw?.raft.term ?? Number.POSITIVE_INFINITY);
    } else if (agreed.term !== entry.term || !bytesEqual(agreed.data, entry.data)) {
      throw new SafetyViolation(
        `state machine safety: node ${node.id} applied (${entry.index}, term ${entry.term}) where another applied term ${agreed.term}`,
      );
    }
    node.applied.push(entry);
    if (entry.type === EntryType.ConfChange) {
      const change = JSON.parse(new TextDecoder().decode(entry.data)) as ConfChange;
      node.config = (node.raw as RawNode).raft.applyConfChange(change);
      node.storage.setConfState(node.config);
      if (change.type === "remove") this.removed.add(change.nodeId);
    }
    const waiting = this.pending.get(node.id);
    if (waiting === undefined) return;
    while (waiting.length > 0 && (waiting[0] as Proposal).index <= entry.index) {
      const proposal = waiting.shift() as Proposal;
      if (proposal.index === entry.index && proposal.term === entry.term) this.acknowledged.push(proposal);
    }
  }

  // ---- Checkers -----------------------------------------------------------------------------

  /** Log matching (§5.3): an (index, term) pair names one entry and one prefix, everywhere. */
  private checkAppend(node: SimNode, entries: readonly Entry[]): void {
    const raw = node.raw as RawNode;
    for (const entry of entries) {
      const prevTerm = raw.raft.log.term(entry.index - 1);
      assert(prevTerm !== undefined, "appended entry with no predecessor");
      const key = `${entry.index}/${entry.term}`;
      const seen = this.entryIdentity.get(key);
      if (seen === undefined) {
        this.entryIdentity.set(key, { prevTerm, data: entry.data });
      } else if (seen.prevTerm !== prevTerm || !bytesEqual(seen.data, entry.data)) {
        throw new SafetyViolation(`log matching: node ${node.id} holds a different entry or prefix at (${key})`);
      }
    }
  }

  /** Election safety (§5.2): at most one leader per term. */
  private checkLeaders(): void {
    for (const node of this.nodes.values()) {
      const raft = node.raw?.raft;
      if (raft === undefined || raft.role !== "leader") continue;
      const known = this.leaderOfTerm.get(raft.term);
      if (known === undefined) this.leaderOfTerm.set(raft.term, node.id);
      else if (known !== node.id) throw new SafetyViolation(`election safety: nodes ${known} and ${node.id} both lead term ${raft.term}`);
    }
  }

  /**
   * Leader completeness (§5.4): a new leader's log holds every entry committed in an earlier term.
   * (A candidate that wins a stale term, on votes that waited in its inbox while it was stalled,
   * leads a term older than entries committed since; it can commit nothing, and need not hold them.)
   */
  private checkNewLeader(node: SimNode): void {
    const raft = (node.raw as RawNode).raft;
    const log = raft.log;
    for (const [index, entry] of this.appliedAt) {
      if (index < log.firstIndex() - 1) continue; // compacted: its own state machine holds it, checked on apply
      if ((this.committedBy.get(index) ?? Number.POSITIVE_INFINITY) >= raft.term) continue;
      if (log.term(index) !== entry.term) {
        throw new SafetyViolation(`leader completeness: leader ${node.id} lacks applied entry (${index}, term ${entry.term})`);
      }
    }
  }

  // ---- Clients ------------------------------------------------------------------------------

  /** The live node that believes it leads in the highest term, if any. */
  leader(): NodeId | undefined {
    let best: { id: NodeId; term: number } | undefined;
    for (const node of this.nodes.values()) {
      const raft = node.raw?.raft;
      if (raft?.role === "leader" && (best === undefined || raft.term > best.term)) best = { id: node.id, term: raft.term };
    }
    return best?.id;
  }

  /** Every live node that believes it is leader. */
  leaders(): NodeId[] {
    return this.ids.filter((id) => this.node(id).raw?.raft.role === "leader");
  }

  /** Proposes `data` at node `id`; returns its index, or undefined if refused. */
  propose(id: NodeId, data: Uint8Array = this.nextCommand()): number | undefined {
    const raw = this.node(id).raw;
    if (raw === undefined || this.stalls.has(id)) return undefined;
    try {
      const index = raw.propose([data]);
      const list = this.pending.get(id) ?? [];
      list.push({ index, term: raw.raft.term, data });
      this.pending.set(id, list);
      this.process(id);
      return index;
    } catch (error) {
      if (error instanceof ProposalRefusedError) return undefined;
      throw error;
    }
  }

  /**
   * Starts a new, empty server that knows the configuration out of band (as `kv serve --join` learns
   * it from the cluster), and asks the leader to add it as a learner. Returns its id.
   */
  addServer(leader: NodeId): NodeId | undefined {
    const raw = this.node(leader).raw;
    if (raw === undefined || raw.raft.role !== "leader" || this.stalls.has(leader)) return undefined;
    const id = Math.max(...this.ids) + 1;
    this.ids.push(id);
    this.createNode(id, { voters: raw.raft.voters, learners: raw.raft.learners });
    this.proposeConfChange(leader, { type: "add-learner", nodeId: id });
    return id;
  }

  /** Proposes a membership change at `id`; returns its index or undefined if refused. */
  proposeConfChange(id: NodeId, change: ConfChange): number | undefined {
    const raw = this.node(id).raw;
    if (raw === undefined || this.stalls.has(id)) return undefined;
    try {
      const index = raw.raft.proposeConfChange(new TextEncoder().encode(JSON.stringify(change)));
      this.confChangesProposed++;
      this.process(id);
      return index;
    } catch (error) {
      if (error instanceof ProposalRefusedError) return undefined;
      throw error;
    }
  }

  /** The configuration as the highest-term leader (or else the most advanced node) applied it. */
  config(): ConfState {
    const leader = this.leader();
    if (leader !== undefined) return this.node(leader).config;
    let best: SimNode | undefined;
    for (const node of this.nodes.values()) if (best === undefined || node.applied.length > best.applied.length) best = node;
    return (best as SimNode).config;
  }

  /** Asks node `id` (if it leads) to hand leadership to `target` (thesis §3.10). */
  transferLeadership(id: NodeId, target: NodeId): void {
    const raw = this.node(id).raw;
    if (raw === undefined || this.stalls.has(id)) return;
    raw.raft.transferLeadership(target);
    this.process(id);
  }

  /** A fresh, unique command. */
  nextCommand(): Uint8Array {
    return new TextEncoder().encode(`cmd-${this.proposalSequence++}`);
  }

  /** Requests a linearizable read index at node `id` with a fresh context; returns the context. */
  readIndex(id: NodeId, lease = false): string {
    const context = `${id}-${this.proposalSequence++}`;
    const raw = this.node(id).raw;
    assert(raw !== undefined, `node ${id} is down`);
    // Linearizability of reads: the index must cover every write acknowledged before the read began.
    let required = 0;
    for (const proposal of this.acknowledged) required = Math.max(required, proposal.index);
    this.readRequired.set(context, required);
    raw.readIndex(context, lease);
    this.process(id);
    return context;
  }

  readStates(id: NodeId): readonly ReadState[] {
    return this.node(id).readStates;
  }

  readFailures(id: NodeId): readonly ReadFailure[] {
    return this.node(id).readFailures;
  }

  applied(id: NodeId): readonly Entry[] {
    return this.node(id).applied;
  }

  /** How many nodes have applied `data` at `index`; throws if they disagree (they must not). */
  appliedCount(index: number): number {
    let count = 0;
    for (const node of this.nodes.values()) if (node.raw !== undefined && node.applied.length >= index) count++;
    return count;
  }

  /**
   * Like 6.5840's `one()`: keeps proposing `data` to whoever leads until `expectedNodes` nodes have
   * applied it; returns its index, or throws after `ticksMax`.
   */
  one(data: Uint8Array, expectedNodes: number, ticksMax = 1_000): number {
    const start = this.nowTick;
    while (this.nowTick - start < ticksMax) {
      const leader = this.leader();
      const index = leader === undefined ? undefined : this.propose(leader, data);
      if (index !== undefined) {
        const done = this.tickUntil(() => {
          const entry = this.appliedAt.get(index);
          return entry !== undefined && bytesEqual(entry.data, data) && this.appliedCount(index) >= expectedNodes;
        }, 4 * this.opts.electionTicks);
        if (done) return index;
      } else {
        this.tick();
      }
    }
    throw new SafetyViolation(`one(): ${new TextDecoder().decode(data)} not applied by ${expectedNodes} nodes in ${ticksMax} ticks`);
  }

  /** The entry applied at `index` by any node, if one was. */
  appliedEntry(index: number): Entry | undefined {
    return this.appliedAt.get(index);
  }

  /**
   * Heals the network, restarts every node, and requires convergence within `ticksMax`: one leader,
   * a fresh entry applied everywhere, every log identical, every acknowledged proposal applied.
   */
  healAndConverge(ticksMax: number): void {
    for (const id of [...this.stalls.keys()]) this.endStall(id);
    this.network.heal();
    this.network.faults = { lossRate: 0, delayTicksMax: 0, duplicateRate: 0 };
    this.crashHook = undefined;
    // Removed servers are shut down, as an operator would; everyone else comes back.
    for (const id of this.ids) {
      if (this.removed.has(id)) this.crash(id);
      else this.restart(id);
    }
    // A server whose addition never committed stays up but is no member: only members must converge.
    const members = () => {
      const config = this.config();
      return [...config.voters, ...config.learners];
    };
    // Liveness without new writes: a leader must bring every log up to its own and commit it all,
    // driven by heartbeats alone (a lost append must not wait for the next client write).
    const caughtUp = this.tickUntil(() => {
      const leader = this.leader();
      if (leader === undefined) return false;
      const last = (this.node(leader).raw as RawNode).raft.log.lastIndex();
      return members().every((id) => {
        const raft = this.node(id).raw?.raft;
        return raft !== undefined && raft.log.lastIndex() === last && raft.log.committed === last && this.node(id).applied.length === last;
      });
    }, ticksMax);
    if (!caughtUp) throw new SafetyViolation(`logs did not converge without new writes in ${ticksMax} ticks`);
    const memberIds = members();
    this.one(this.nextCommand(), memberIds.length, ticksMax);
    const reference = this.node(memberIds[0] as NodeId).applied;
    for (const node of memberIds.map((id) => this.node(id))) {
      const raft = (node.raw as RawNode).raft;
      if (node.applied.length !== reference.length) {
        const converged = this.tickUntil(() => node.applied.length === reference.length, ticksMax);
        if (!converged) throw new SafetyViolation(`node ${node.id} applied ${node.applied.length}, node 1 ${reference.length}`);
      }
      if (raft.log.lastIndex() < node.applied.length) throw new SafetyViolation(`node ${node.id} applied past its log`);
    }
    for (const proposal of this.acknowledged) {
      for (const node of memberIds.map((id) => this.node(id))) {
        const entry = node.applied[proposal.index - 1];
        if (entry === undefined || entry.term !== proposal.term || !bytesEqual(entry.data, proposal.data)) {
          throw new SafetyViolation(`acknowledged write at ${proposal.index} lost on node ${node.id}`);
        }
      }
    }
  }

  /** One line per node, for failure reports. */
  describe(): string {
    return this.ids
      .map((id) => {
        const node = this.node(id);
        const raft = node.raw?.raft;
        if (raft === undefined) return `node ${id}: down, applied ${node.applied.length}`;
        return `node ${id}: ${raft.role} term ${raft.term} vote ${raft.vote} leader ${raft.leaderId} last ${raft.log.lastIndex()} commit ${raft.log.committed} applied ${node.applied.length}`;
      })
      .join("\n");
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
