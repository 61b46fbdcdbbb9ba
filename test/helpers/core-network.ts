// A network of bare Raft cores (RawNode) for tests of the protocol itself, in the manner of
// etcd-io/raft's `network` in raft_test.go: every Ready is persisted at once to a memory disk and
// its messages queued, so a test sees what the paper's rules do and nothing else. It has no fsync
// pipeline, stalls, snapshot transfer or client answers: those belong to the node loop, which the
// simulator runs (src/sim/node-sim.ts, test/node-sim.test.ts, test/node-swarm.test.ts).
import { assert } from "../../src/lib/assert.ts";
import { createPrng, type Prng } from "../../src/lib/prng.ts";
import { MemoryStorage } from "../../src/raft/memory-storage.ts";
import { defaultRaftLimits } from "../../src/raft/raft.ts";
import { RawNode } from "../../src/raft/raw-node.ts";
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
} from "../../src/raft/types.ts";

/** A broken Raft guarantee found by the checkers. */
export class SafetyViolation extends Error {
  override name = "SafetyViolation";
}

/** Fault settings of the message queue. */
export interface CoreNetworkFaults {
  /** Probability that a message is dropped. */
  lossRate: number;
  /** Each message is delayed by a uniform number of ticks in [0, delayTicksMax]; > 0 also reorders. */
  delayTicksMax: number;
  /** Probability that a delivered message is delivered a second time. */
  duplicateRate: number;
}

interface InFlight {
  readonly deliverAtTick: number;
  readonly sequence: number;
  readonly message: Message;
}

/** Messages in one queue ordered by delivery tick, then send order; directed links can be cut. */
export class CoreMessageQueue {
  faults: CoreNetworkFaults = { lossRate: 0, delayTicksMax: 0, duplicateRate: 0 };
  private queue: InFlight[] = [];
  private sequence = 0;
  private readonly cut = new Set<string>();
  /** Messages offered, by type, whether or not they arrive. */
  readonly sentByType = new Map<Message["type"], number>();
  /** Append rejections offered: how hard the leaders had to search back. */
  appendRejections = 0;

  constructor(private readonly prng: Prng) {}

  /** Splits the nodes into groups that talk only within themselves. */
  partition(groups: readonly (readonly NodeId[])[]): void {
    this.cut.clear();
    for (const a of groups) for (const b of groups) if (a !== b) for (const from of a) for (const to of b) this.cut.add(`${from}>${to}`);
  }

  /** Cuts every link to and from `id`. */
  isolate(id: NodeId, all: readonly NodeId[]): void {
    for (const other of all) {
      if (other === id) continue;
      this.cut.add(`${id}>${other}`);
      this.cut.add(`${other}>${id}`);
    }
  }

  heal(): void {
    this.cut.clear();
  }

  isCut(from: NodeId, to: NodeId): boolean {
    return this.cut.has(`${from}>${to}`);
  }

  send(message: Message, nowTick: number): void {
    this.sentByType.set(message.type, (this.sentByType.get(message.type) ?? 0) + 1);
    if (message.type === "append-response" && !message.success) this.appendRejections++;
    if (this.isCut(message.from, message.to)) return;
    if (this.faults.lossRate > 0 && this.prng.chance(this.faults.lossRate)) return;
    this.enqueue(message, nowTick);
    if (this.faults.duplicateRate > 0 && this.prng.chance(this.faults.duplicateRate)) this.enqueue(message, nowTick);
  }

  private enqueue(message: Message, nowTick: number): void {
    const delay = this.faults.delayTicksMax > 0 ? this.prng.intInclusive(0, this.faults.delayTicksMax) : 0;
    this.queue.push({ deliverAtTick: nowTick + delay, sequence: this.sequence++, message });
  }

  /** Removes and returns every message due by `nowTick`, in delivery order (a link cut meanwhile loses it). */
  due(nowTick: number): Message[] {
    if (this.queue.length === 0) return [];
    const ready: InFlight[] = [];
    const waiting: InFlight[] = [];
    for (const item of this.queue) (item.deliverAtTick <= nowTick ? ready : waiting).push(item);
    this.queue = waiting;
    ready.sort((a, b) => a.deliverAtTick - b.deliverAtTick || a.sequence - b.sequence);
    return ready.filter((item) => !this.isCut(item.message.from, item.message.to)).map((item) => item.message);
  }

  /** Drops everything in flight to `id` (its process died). */
  dropTo(id: NodeId): void {
    this.queue = this.queue.filter((item) => item.message.to !== id);
  }
}

/** How a core network is set up. */
export interface CoreNetworkOptions {
  readonly nodeCount: number;
  readonly seed: number;
  readonly electionTicks?: number;
  readonly heartbeatTicks?: number;
  readonly preVote?: boolean;
  readonly checkQuorum?: boolean;
  /**
   * Each node's clock runs slow by a rate drawn in [0, clockDriftMax] (it misses that share of
   * ticks), within the drift bound leases assume (`RaftConfig.leaseDriftTicks`). Default 0.
   */
  readonly clockDriftMax?: number;
}

interface CoreServer {
  readonly id: NodeId;
  /** What is on disk: survives crashes. */
  storage: MemoryStorage;
  /** The state machine: applied entries in order (durable with the log). */
  applied: Entry[];
  config: ConfState;
  raw: RawNode | undefined;
  readStates: ReadState[];
  readFailures: ReadFailure[];
}

interface Proposal {
  readonly index: number;
  readonly term: number;
  readonly data: Uint8Array;
}

/**
 * Bare cores on a message queue, ticked together from one seed. After every Ready it checks the
 * paper's safety properties (Figure 3): election safety, log matching, leader completeness, state
 * machine safety, and that no read index misses an acknowledged write; a breach throws.
 */
export class CoreNetwork {
  readonly ids: NodeId[];
  readonly network: CoreMessageQueue;
  nowTick = 0;
  private readonly clockPrng: Prng;
  private readonly tickSkipRate = new Map<NodeId, number>();
  private readonly servers = new Map<NodeId, CoreServer>();
  private readonly opts: Required<CoreNetworkOptions>;
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** (index, term) → the term before it and the data: two logs that share one share the prefix. */
  private readonly entryIdentity = new Map<string, { prevTerm: number; data: Uint8Array }>();
  /** index → the entry every state machine applies there. */
  private readonly appliedAt = new Map<number, Entry>();
  /** index → a term by which the entry there was committed (the term of the first node seen to apply it). */
  private readonly committedBy = new Map<number, number>();
  /** Proposals acknowledged to a client: applied on the leader that took them. */
  readonly acknowledged: Proposal[] = [];
  private readonly pending = new Map<NodeId, Proposal[]>();
  private proposalSequence = 0;
  /** Servers whose removal some state machine applied: shut down at heal time. */
  readonly removed = new Set<NodeId>();
  /** Read context → the highest acknowledged write index when the read began. */
  private readonly readRequired = new Map<string, number>();
  readsServed = 0;
  confChangesProposed = 0;

  constructor(options: CoreNetworkOptions) {
    this.opts = { electionTicks: 10, heartbeatTicks: 1, preVote: defaultRaftLimits.preVote, checkQuorum: defaultRaftLimits.checkQuorum, clockDriftMax: 0, ...options };
    this.clockPrng = createPrng(options.seed ^ 0xc10c);
    this.network = new CoreMessageQueue(createPrng(options.seed ^ 0x5eed));
    this.ids = Array.from({ length: options.nodeCount }, (_, i) => i + 1);
    const initial: ConfState = { voters: this.ids.slice(), learners: [] };
    for (const id of this.ids) this.createServer(id, initial);
    if (this.opts.clockDriftMax > 0) for (const id of this.ids) this.tickSkipRate.set(id, this.clockPrng.next() * this.opts.clockDriftMax);
  }

  private createServer(id: NodeId, config: ConfState): void {
    const server: CoreServer = { id, storage: new MemoryStorage(config.voters, config.learners), applied: [], config, raw: undefined, readStates: [], readFailures: [] };
    this.servers.set(id, server);
    this.start(server);
  }

  private start(server: CoreServer): void {
    server.raw = new RawNode({
      id: server.id,
      storage: server.storage,
      electionTicks: this.opts.electionTicks,
      heartbeatTicks: this.opts.heartbeatTicks,
      prng: createPrng(this.opts.seed * 31 + server.id * 7919 + this.nowTick),
      applied: server.applied.length,
      ...defaultRaftLimits,
      preVote: this.opts.preVote,
      checkQuorum: this.opts.checkQuorum,
    });
    server.readStates = [];
    server.readFailures = [];
  }

  private server(id: NodeId): CoreServer {
    const server = this.servers.get(id);
    assert(server !== undefined, `no node ${id}`);
    return server;
  }

  raw(id: NodeId): RawNode | undefined {
    return this.server(id).raw;
  }

  isUp(id: NodeId): boolean {
    return this.server(id).raw !== undefined;
  }

  /** Kills the process; its disk (log, state machine, configuration) survives, its proposals do not. */
  crash(id: NodeId): void {
    const server = this.server(id);
    server.raw = undefined;
    this.pending.delete(id);
    this.network.dropTo(id);
  }

  restart(id: NodeId): void {
    const server = this.server(id);
    if (server.raw === undefined) this.start(server);
  }

  /** Cuts a node off from every other (its process keeps running). */
  disconnect(id: NodeId): void {
    this.network.isolate(id, this.ids);
  }

  /** One tick: every live node ticks (a drifting clock misses some), then messages due are delivered until quiet. */
  tick(): void {
    this.nowTick++;
    for (const id of this.ids) {
      const raw = this.server(id).raw;
      if (raw === undefined) continue;
      const skipRate = this.tickSkipRate.get(id) ?? 0;
      if (skipRate > 0 && this.clockPrng.chance(skipRate)) continue;
      raw.tick();
      this.process(id);
    }
    this.deliver();
  }

  private deliver(): void {
    for (let round = 0; round < 10_000; round++) {
      const due = this.network.due(this.nowTick);
      if (due.length === 0) return;
      for (const message of due) {
        const raw = this.server(message.to).raw;
        if (raw === undefined) continue;
        raw.step(message);
        this.process(message.to);
      }
    }
    throw new SafetyViolation("message storm: delivery did not quiesce within 10000 rounds");
  }

  runTicks(count: number): void {
    for (let i = 0; i < count; i++) this.tick();
  }

  /** Ticks until `condition` holds; false if `ticksMax` pass first. */
  tickUntil(condition: () => boolean, ticksMax: number): boolean {
    for (let i = 0; i < ticksMax; i++) {
      if (condition()) return true;
      this.tick();
    }
    return condition();
  }

  /** Persists, sends and applies every Ready of one core, checking as it goes. */
  private process(id: NodeId): void {
    const server = this.server(id);
    for (;;) {
      const raw = server.raw;
      if (raw === undefined || !raw.hasReady()) return;
      const ready = raw.ready();
      // Compaction and snapshot transfer are the node loop's (src/node/snapshot-transfer.ts): never here.
      assert(ready.snapshot === undefined, "a bare core network installs no snapshots");
      this.checkAppend(server, ready.entries);
      server.storage.save(ready.hardState, ready.entries, ready.mustSync);
      if (ready.softState?.role === "leader") this.checkNewLeader(server);
      for (const message of ready.messages) {
        assert(message.type !== "snapshot", "a bare core network sends no snapshots");
        this.network.send(message, this.nowTick);
      }
      for (const entry of ready.committedEntries) this.apply(server, entry);
      for (const state of ready.readStates) {
        const required = this.readRequired.get(state.readContext) ?? 0;
        if (state.index < required) {
          throw new SafetyViolation(`stale read: node ${id} got read index ${state.index} for ${state.readContext}, but ${required} was acknowledged before it began`);
        }
        this.readsServed++;
      }
      server.readStates.push(...ready.readStates);
      server.readFailures.push(...ready.readFailures);
      raw.advance(ready);
      this.checkLeaders();
    }
  }

  private apply(server: CoreServer, entry: Entry): void {
    assert(entry.index === server.applied.length + 1, `node ${server.id} applies ${entry.index} after ${server.applied.length}`);
    const agreed = this.appliedAt.get(entry.index);
    if (agreed === undefined) {
      this.appliedAt.set(entry.index, entry);
      this.committedBy.set(entry.index, server.raw?.basicStatus().term ?? Number.POSITIVE_INFINITY);
    } else if (agreed.term !== entry.term || !bytesEqual(agreed.data, entry.data)) {
      throw new SafetyViolation(`state machine safety: node ${server.id} applied (${entry.index}, term ${entry.term}) where another applied term ${agreed.term}`);
    }
    server.applied.push(entry);
    if (entry.type === EntryType.ConfChange) {
      const change = JSON.parse(new TextDecoder().decode(entry.data)) as ConfChange;
      server.config = (server.raw as RawNode).applyConfChange(change, entry.index);
      server.storage.setConfState(server.config);
      if (change.type === "remove") this.removed.add(change.nodeId);
    }
    const waiting = this.pending.get(server.id);
    if (waiting === undefined) return;
    while (waiting.length > 0 && (waiting[0] as Proposal).index <= entry.index) {
      const proposal = waiting.shift() as Proposal;
      if (proposal.index === entry.index && proposal.term === entry.term) this.acknowledged.push(proposal);
    }
  }

  /** Log matching (§5.3): an (index, term) pair names one entry and one prefix, everywhere. */
  private checkAppend(server: CoreServer, entries: readonly Entry[]): void {
    const raw = server.raw as RawNode;
    for (const entry of entries) {
      const prevTerm = raw.logTerm(entry.index - 1);
      assert(prevTerm !== undefined, "appended entry with no predecessor");
      const key = `${entry.index}/${entry.term}`;
      const seen = this.entryIdentity.get(key);
      if (seen === undefined) this.entryIdentity.set(key, { prevTerm, data: entry.data });
      else if (seen.prevTerm !== prevTerm || !bytesEqual(seen.data, entry.data)) {
        throw new SafetyViolation(`log matching: node ${server.id} holds a different entry or prefix at (${key})`);
      }
    }
  }

  /** Election safety (§5.2): at most one leader per term. */
  private checkLeaders(): void {
    for (const server of this.servers.values()) {
      const status = server.raw?.basicStatus();
      if (status === undefined || status.role !== "leader") continue;
      const known = this.leaderOfTerm.get(status.term);
      if (known === undefined) this.leaderOfTerm.set(status.term, server.id);
      else if (known !== server.id) throw new SafetyViolation(`election safety: nodes ${known} and ${server.id} both lead term ${status.term}`);
    }
  }

  /** Leader completeness (§5.4): a new leader's log holds every entry committed in an earlier term. */
  private checkNewLeader(server: CoreServer): void {
    const raw = server.raw as RawNode;
    const status = raw.basicStatus();
    for (const [index, entry] of this.appliedAt) {
      if (index < status.firstIndex - 1) continue;
      if ((this.committedBy.get(index) ?? Number.POSITIVE_INFINITY) >= status.term) continue;
      if (raw.logTerm(index) !== entry.term) {
        throw new SafetyViolation(`leader completeness: leader ${server.id} lacks applied entry (${index}, term ${entry.term})`);
      }
    }
  }

  /** The live node that believes it leads in the highest term, if any. */
  leader(): NodeId | undefined {
    let best: { id: NodeId; term: number } | undefined;
    for (const server of this.servers.values()) {
      const status = server.raw?.basicStatus();
      if (status?.role === "leader" && (best === undefined || status.term > best.term)) best = { id: server.id, term: status.term };
    }
    return best?.id;
  }

  /** Every live node that believes it is leader. */
  leaders(): NodeId[] {
    return this.ids.filter((id) => this.server(id).raw?.basicStatus().role === "leader");
  }

  /** Proposes `data` at node `id`; its index, or undefined if refused. */
  propose(id: NodeId, data: Uint8Array = this.nextCommand()): number | undefined {
    const raw = this.server(id).raw;
    if (raw === undefined) return undefined;
    try {
      const index = raw.propose([data]);
      const list = this.pending.get(id) ?? [];
      list.push({ index, term: raw.basicStatus().term, data });
      this.pending.set(id, list);
      this.process(id);
      return index;
    } catch (error) {
      if (error instanceof ProposalRefusedError) return undefined;
      throw error;
    }
  }

  /** Starts a new, empty server that knows the configuration out of band, and asks the leader to add it as a learner. */
  addServer(leader: NodeId): NodeId | undefined {
    const status = this.server(leader).raw?.basicStatus();
    if (status === undefined || status.role !== "leader") return undefined;
    const id = Math.max(...this.ids) + 1;
    this.ids.push(id);
    this.createServer(id, { voters: status.voters.slice(), learners: status.learners.slice() });
    this.proposeConfChange(leader, { type: "add-learner", nodeId: id });
    return id;
  }

  /** Proposes a membership change at `id`; its index, or undefined if refused. */
  proposeConfChange(id: NodeId, change: ConfChange): number | undefined {
    const raw = this.server(id).raw;
    if (raw === undefined) return undefined;
    try {
      const index = raw.proposeConfChange(new TextEncoder().encode(JSON.stringify(change)));
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
    if (leader !== undefined) return this.server(leader).config;
    let best: CoreServer | undefined;
    for (const server of this.servers.values()) if (best === undefined || server.applied.length > best.applied.length) best = server;
    return (best as CoreServer).config;
  }

  /** Asks node `id` (if it leads) to hand leadership to `target` (thesis §3.10). */
  transferLeadership(id: NodeId, target: NodeId): void {
    const raw = this.server(id).raw;
    if (raw === undefined) return;
    raw.transferLeadership(target);
    this.process(id);
  }

  nextCommand(): Uint8Array {
    return new TextEncoder().encode(`cmd-${this.proposalSequence++}`);
  }

  /** Requests a read index at node `id` with a fresh context; returns the context. */
  readIndex(id: NodeId, lease = false): string {
    const context = `${id}-${this.proposalSequence++}`;
    const raw = this.server(id).raw;
    assert(raw !== undefined, `node ${id} is down`);
    let required = 0;
    for (const proposal of this.acknowledged) required = Math.max(required, proposal.index);
    this.readRequired.set(context, required);
    raw.readIndex(context, lease);
    this.process(id);
    return context;
  }

  readStates(id: NodeId): readonly ReadState[] {
    return this.server(id).readStates;
  }

  readFailures(id: NodeId): readonly ReadFailure[] {
    return this.server(id).readFailures;
  }

  applied(id: NodeId): readonly Entry[] {
    return this.server(id).applied;
  }

  /** How many live nodes have applied up to `index`. */
  appliedCount(index: number): number {
    let count = 0;
    for (const server of this.servers.values()) if (server.raw !== undefined && server.applied.length >= index) count++;
    return count;
  }

  /** Like 6.5840's `one()`: proposes `data` to whoever leads until `expectedNodes` applied it; its index. */
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

  appliedEntry(index: number): Entry | undefined {
    return this.appliedAt.get(index);
  }

  /**
   * Heals the network, restarts every member, and requires within `ticksMax`: every log brought up
   * to the leader's and applied by heartbeats alone, then a fresh entry applied everywhere, and
   * every acknowledged proposal applied by every member.
   */
  healAndConverge(ticksMax: number): void {
    this.network.heal();
    this.network.faults = { lossRate: 0, delayTicksMax: 0, duplicateRate: 0 };
    for (const id of this.ids) {
      if (this.removed.has(id)) this.crash(id);
      else this.restart(id);
    }
    const members = () => {
      const config = this.config();
      return [...config.voters, ...config.learners];
    };
    const caughtUp = this.tickUntil(() => {
      const leader = this.leader();
      if (leader === undefined) return false;
      const last = (this.server(leader).raw as RawNode).basicStatus().lastIndex;
      return members().every((id) => {
        const status = this.server(id).raw?.basicStatus();
        return status !== undefined && status.lastIndex === last && status.commit === last && this.server(id).applied.length === last;
      });
    }, ticksMax);
    if (!caughtUp) throw new SafetyViolation(`logs did not converge without new writes in ${ticksMax} ticks\n${this.describe()}`);
    const memberIds = members();
    this.one(this.nextCommand(), memberIds.length, ticksMax);
    const reference = this.server(memberIds[0] as NodeId).applied;
    for (const server of memberIds.map((id) => this.server(id))) {
      if (server.applied.length !== reference.length && !this.tickUntil(() => server.applied.length === reference.length, ticksMax)) {
        throw new SafetyViolation(`node ${server.id} applied ${server.applied.length}, node ${memberIds[0]} ${reference.length}`);
      }
    }
    for (const proposal of this.acknowledged) {
      for (const server of memberIds.map((id) => this.server(id))) {
        const entry = server.applied[proposal.index - 1];
        if (entry === undefined || entry.term !== proposal.term || !bytesEqual(entry.data, proposal.data)) {
          throw new SafetyViolation(`acknowledged write at ${proposal.index} lost on node ${server.id}`);
        }
      }
    }
  }

  /** One line per node, for failure reports. */
  describe(): string {
    return this.ids
      .map((id) => {
        const server = this.server(id);
        const status = server.raw?.basicStatus();
        if (status === undefined) return `node ${id}: down, applied ${server.applied.length}`;
        return `node ${id}: ${status.role} term ${status.term} vote ${status.vote} leader ${status.leaderId} last ${status.lastIndex} commit ${status.commit} applied ${server.applied.length}`;
      })
      .join("\n");
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
