import { assert, unreachable } from "../lib/assert.ts";
import type { Prng } from "../lib/prng.ts";
import { RaftLog } from "./log.ts";
import { Progress } from "./progress.ts";
import type { RaftStorage } from "./storage.ts";
import {
  EntryType,
  fromLeader,
  ProposalRefusedError,
  type AppendRequest,
  type ConfChange,
  type ConfState,
  type AppendResponse,
  type Entry,
  type HardState,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type LostLog,
  type Message,
  type NodeId,
  type ReadFailure,
  type ReadIndexRequest,
  type ReadIndexResponse,
  type ReadState,
  type Role,
  type SnapshotRequest,
  type SoftState,
  type VoteRequest,
  type VoteResponse,
} from "./types.ts";

/** How a core is set up. Time is in ticks; the driver decides how long a tick is. */
export interface RaftConfig {
  readonly id: NodeId;
  readonly storage: RaftStorage;
  /** A follower campaigns after a random timeout in [electionTicks, 2 * electionTicks - 1]. */
  readonly electionTicks: number;
  /** A leader sends heartbeats every `heartbeatTicks`; must be well below electionTicks. */
  readonly heartbeatTicks: number;
  /** Injected randomness: a seeded generator replays the same elections. */
  readonly prng: Prng;
  /** The last index the state machine has applied (it survives restarts on its own). */
  readonly applied: number;
  /** Soft cap on the entry bytes in one AppendEntries (at least one entry is always sent). */
  readonly appendBytesMax: number;
  /** Appends in flight to one follower in replicate state. */
  readonly inflightMessagesMax: number;
  /** Bytes of entry data in flight to one follower in replicate state (at least one append goes). */
  readonly inflightBytesMax?: number;
  /** Proposals refused once this many entries are uncommitted: bounds a leader that lost its quorum. */
  readonly uncommittedEntriesMax: number;
  /** Cap on committed entry bytes handed out in one Ready. */
  readonly committedBytesMax: number;
  /** Rehearse each election with pre-votes so a rejoining server cannot depose a healthy leader (thesis §9.6). */
  readonly preVote: boolean;
  /**
   * Lease reads (thesis §6.4.1) assume clocks tick at rates within this many ticks per election
   * timeout of each other: a leader's lease is electionTicks - 1 - leaseDriftTicks from the heartbeat
   * round a quorum acknowledged. Ignored without checkQuorum.
   */
  readonly leaseDriftTicks?: number;
  /** A leader steps down when it has not heard from a quorum in two election timeouts in a row (thesis §6.2; see `tick`). */
  readonly checkQuorum: boolean;
  /**
   * A server whose log is empty at start (a new server's, or one whose data was lost) grants no
   * vote to a candidate whose log is not empty until it has caught up with a leader (it has
   * committed an entry of the term of the first leader it heard from), or for this
   * many ticks at most. Meanwhile it votes only for a candidate whose last entry is of that term or
   * a later one. 0 (the default): no hold. See `votesHeld`.
   */
  readonly holdVotesTicksMax?: number;
  /**
   * With `holdVotesTicksMax`: the server held its votes when it last stopped (its driver recorded
   * the hold and had not seen it released), so it holds them again though its log is no longer
   * empty: it may hold only part of what it must catch up with.
   */
  readonly votesHeldAtStart?: boolean;
}

export const defaultRaftLimits = {
  appendBytesMax: 1 << 20,
  inflightMessagesMax: 256,
  inflightBytesMax: 8 << 20,
  uncommittedEntriesMax: 65_536,
  committedBytesMax: 16 << 20,
  preVote: true,
  checkQuorum: true,
} as const;

/**
 * A ReadIndex request a leader holds until a quorum of voters has acknowledged a heartbeat round
 * numbered `round` or later: a round sent after the read arrived (thesis §6.4 step 3).
 */
interface PendingRead {
  readonly readContext: string;
  readonly index: number;
  readonly from: NodeId;
  round: number;
}

/**
 * The Raft consensus core (the paper's Figure 2 and thesis chapter 3, ReadIndex from §6.4), as a
 * pure state machine in the manner of etcd-io/raft: `step` a message, `tick` the clock, and collect
 * the output (messages, entries to persist and to apply, read states) that RawNode turns into Ready.
 */
export class Raft {
  readonly id: NodeId;
  term = 0;
  vote: NodeId = 0;
  role: Role = "follower";
  /** A candidate still rehearsing with pre-votes: its term has not been raised yet. */
  preCandidate = false;
  /** The pre-vote rounds this server has begun (a counter: see `VoteRequest.round`). */
  private preVoteRound = 0;
  leaderId: NodeId = 0;
  /** Leader: the voter leadership is being handed to, or 0. Proposals are refused meanwhile. */
  leadTransferee: NodeId = 0;
  readonly log: RaftLog;
  voters: readonly NodeId[];
  learners: readonly NodeId[];
  /** Follower: the highest commit index an append of this term's leader named (0 before one): see BasicStatus.leaderCommit. */
  leaderCommit = 0;
  /** Leader: the index of the last membership change appended; another waits until it is applied. */
  private pendingConfIndex = 0;
  /** Leader: checks of the quorum in a row (one per election timeout) that found no majority heard from. */
  private quorumSilentChecks = 0;
  /** Leader: check-quorum rounds it completed this term (see `votersHeardRecently`). */
  private roundsLed = 0;
  /** The index as of which `voters` and `learners` hold: the last change applied, or a snapshot restored. */
  private configIndex: number;
  /** Leader only: one entry per member (voters and learners), self included. */
  private progress = new Map<NodeId, Progress>();
  /** Candidate only: votes received this term. */
  private votes = new Map<NodeId, boolean>();
  private electionElapsedTicks = 0;
  /** Ticks since this core started: the leader's clock for its lease. */
  private nowTicks = 0;
  /**
   * When a current-term leader was last heard from (`followLeader`), by `nowTicks`. Unlike
   * `leaderId`, a term change does not clear it: the promise a follower made by acknowledging a
   * leader (no vote for anyone else for one election timeout, `inLeaderLease`) outlives a stale
   * higher-term answer that moves its term on.
   */
  private leaderHeardTick = Number.NEGATIVE_INFINITY;
  /** Leader: the send tick of the newest heartbeat round a quorum acknowledged. */
  private leaseStartTick = Number.NEGATIVE_INFINITY;
  /**
   * Leader: heartbeat rounds are numbered 1, 2, ... within its term, and the number travels as the
   * heartbeat's context (followers echo it). Numbers are the leader's own, never a client's read
   * context: a follower that restarts reuses its contexts, and a delayed answer to an old round must
   * not confirm a newer read. An ack of round R says the voter followed us after R was sent.
   */
  private heartbeatRound = 0;
  /** Leader: acks of rounds before this are ignored (set by a configuration change). */
  private roundsValidFrom = 1;
  /** Leader: the highest round each voter acknowledged. */
  private ackedRound = new Map<NodeId, number>();
  /** Leader: the send tick of recent rounds, for the lease; rounds older than a lease are dropped. */
  private roundSentTick = new Map<number, number>();
  /**
   * Leader: a leadership transfer was started in this term. Its target may win an election that
   * ignores voters' leases (`transfer`), even after the leader abandons the transfer (a late
   * timeout-now), so no lease read is answered for the rest of the term.
   */
  private transferredThisTerm = false;
  private heartbeatElapsedTicks = 0;
  private electionTimeoutTicks = 0;

  /** Output collected for the next Ready. */
  messages: Message[] = [];
  readStates: ReadState[] = [];
  readFailures: ReadFailure[] = [];

  /** Leader: reads waiting for a quorum of heartbeat acks, oldest first. */
  private pendingReads: PendingRead[] = [];
  /** Follower: set once, when a heartbeat shows this node lost entries it had acknowledged (see LostLog). */
  private lostLogSeen: LostLog | undefined;
  /**
   * Set when the log was empty at start (or `votesHeldAtStart`) and `holdVotesTicksMax`: the term of
   * the first leader this server heard from (undefined until then). Cleared once it has committed an
   * entry of that term. See `votesHeld`.
   */
  private voteHold: { term: number | undefined } | undefined;
  /** Votes refused, and campaigns not started, because of the hold (for the driver's log). */
  heldVoteRefusals = 0;
  /** Leader: reads that arrived before the leader committed an entry of its own term (§6.4 step 1). */
  private readsBeforeTermCommit: { readContext: string; from: NodeId }[] = [];

  private readonly cfg: RaftConfig;

  constructor(cfg: RaftConfig) {
    assert(cfg.heartbeatTicks >= 1 && cfg.electionTicks > cfg.heartbeatTicks, "need electionTicks > heartbeatTicks >= 1");
    this.cfg = cfg;
    this.id = cfg.id;
    const { hardState, voters, learners } = cfg.storage.initialState();
    this.voters = voters.slice().sort((a, b) => a - b);
    this.learners = (learners ?? []).filter((id) => !voters.includes(id)).sort((a, b) => a - b);
    this.log = new RaftLog(cfg.storage, hardState.commit, cfg.applied);
    // The storage's configuration is the one as of its applied index.
    this.configIndex = this.log.applied;
    this.term = hardState.term;
    this.vote = hardState.vote;
    if ((cfg.holdVotesTicksMax ?? 0) > 0 && (this.log.lastIndex() === 0 || cfg.votesHeldAtStart === true)) this.voteHold = { term: undefined };
    this.becomeFollower(this.term, 0);
  }

  /**
   * Whether this server still holds its vote from candidates with a non-empty log (see
   * `holdVotesTicksMax`). An empty log cannot be told from a lost one: a voter whose data dir was
   * emptied forgot the entries it acknowledged, and its vote could elect a candidate that lacks
   * them, losing committed entries. Say the first leader it then hears from leads term T. If that
   * leader is not the one those entries were acknowledged to (that one tells it that it lost them:
   * see `lostLog`) and leads the newest term, it was elected without this server and after them, so
   * its log holds them (leader completeness); once this server has committed an entry of term T,
   * its log holds that leader's up to there (log matching), those entries among them, and it votes
   * again. A cluster's first election (every log empty) is not held up: its candidates' logs are
   * empty too.
   *
   * What it does not cover: a deposed leader that does not know it yet (stalled, or cut off, with
   * check-quorum not yet run out) may be the first to reach this server, whose term is 0: T is then
   * older than the entries it forgot, and the hold ends too early. A server that forgets its state
   * can only be made safe for good by joining again as a new member (docs/operations.md).
   *
   * The hold ends after `holdVotesTicksMax` ticks whatever happened: a server that never heard
   * from a leader cannot tell a new one's empty log from a lost one, and held for good it could
   * keep a cluster without a leader for good (the node swarm: a member that never heard from the
   * first leader, then that leader removed, left the other member no one to win a vote from). So
   * it covers a voter wiped and started again while the members that hold what it acknowledged
   * are down for less than that, as in a rolling restart.
   */
  votesHeld(): boolean {
    const hold = this.voteHold;
    if (hold === undefined) return false;
    const expired = this.nowTicks >= (this.cfg.holdVotesTicksMax ?? 0);
    if (!expired && (hold.term === undefined || this.log.committed === 0 || (this.log.term(this.log.committed) ?? 0) < hold.term)) return true;
    this.voteHold = undefined;
    return false;
  }

  /**
   * Whether this server, holding its votes, would refuse its own: a campaign counts its own vote,
   * and elected it would drop the hold (`becomeLeader`), so a candidate it may not vote for must not
   * campaign either (found in review: a wiped server given part of the log, its leader gone, won
   * with a stale voter's vote). The only voter needs no other vote: it holds all there is.
   */
  private ownVoteHeld(): boolean {
    return this.quorum() > 1 && !this.heldVoteAllowed(this.log.lastTerm(), this.log.lastIndex());
  }

  /**
   * Whether a held vote may still go to a candidate whose log ends with an entry of `lastLogTerm`
   * at `lastLogIndex`: an empty log (a new cluster's first election), or one whose last entry is of
   * term T (see `votesHeld`) or later. Such a log holds every entry committed before T (log
   * matching, leader completeness), so every entry this server could have acknowledged. Without it,
   * a server that joined empty and was promoted before it caught up, its leader gone, refused for
   * good the one candidate that held its leader's entries (found by the node swarm).
   */
  private heldVoteAllowed(lastLogTerm: number, lastLogIndex: number): boolean {
    if (lastLogIndex === 0 || !this.votesHeld()) return true;
    const term = this.voteHold?.term;
    return term !== undefined && lastLogTerm >= term;
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  softState(): SoftState {
    return { leaderId: this.leaderId, role: this.role };
  }

  private quorum(): number {
    return Math.floor(this.voters.length / 2) + 1;
  }

  isVoter(id: NodeId): boolean {
    return this.voters.includes(id);
  }

  /** Voters and learners: everyone a leader replicates to. */
  members(): NodeId[] {
    return [...this.voters, ...this.learners];
  }

  /** Leader: how far `id` has replicated (for promoting a caught-up learner), or undefined. */
  matchIndexOf(id: NodeId): number | undefined {
    return this.progress.get(id)?.matchIndex;
  }

  // ---- Role changes -------------------------------------------------------------------------

  private reset(term: number): void {
    if (term !== this.term) {
      this.term = term;
      this.vote = 0;
      this.leaderCommit = 0;
    }
    this.leaderId = 0;
    this.leadTransferee = 0;
    this.preCandidate = false;
    this.electionElapsedTicks = 0;
    this.heartbeatElapsedTicks = 0;
    this.electionTimeoutTicks = this.cfg.prng.intInclusive(this.cfg.electionTicks, 2 * this.cfg.electionTicks - 1);
    this.votes.clear();
    this.progress.clear();
    this.leaseStartTick = Number.NEGATIVE_INFINITY;
    this.heartbeatRound = 0;
    this.roundsValidFrom = 1;
    this.ackedRound.clear();
    this.roundSentTick.clear();
    this.transferredThisTerm = false;
    this.failPendingReads("not_leader");
  }

  private becomeFollower(term: number, leaderId: NodeId): void {
    this.reset(term);
    this.role = "follower";
    this.leaderId = leaderId;
  }

  private becomeCandidate(): void {
    assert(this.role !== "leader", "a leader does not campaign");
    this.reset(this.term + 1);
    this.role = "candidate";
    this.vote = this.id;
  }

  /** Pre-vote rehearsal: term, vote and log stay as they are (thesis §9.6). */
  private becomePreCandidate(): void {
    assert(this.role !== "leader", "a leader does not campaign");
    this.reset(this.term);
    this.role = "candidate";
    this.preCandidate = true;
    this.preVoteRound++;
  }

  private becomeLeader(): void {
    assert(this.role === "candidate" && !this.preCandidate, "only a candidate becomes leader");
    this.reset(this.term);
    this.role = "leader";
    this.leaderId = this.id;
    this.quorumSilentChecks = 0;
    this.roundsLed = 0;
    // Elected by a quorum, its log holds every committed entry (leader completeness): it votes again
    // once it follows (held on, a cluster's first leader refused every candidate after it, for good).
    this.voteHold = undefined;
    const lastIndex = this.log.lastIndex();
    for (const member of this.members()) {
      this.progress.set(member, new Progress(lastIndex + 1, this.cfg.inflightMessagesMax, this.cfg.inflightBytesMax));
    }
    // A change may sit uncommitted in the log we inherit: allow no other until all of it is applied.
    this.pendingConfIndex = lastIndex;
    // A no-op of the new term lets the leader commit, and so learn, everything committed before it (§5.4.2, §6.4).
    this.appendEntries([new Uint8Array(0)]);
  }

  // ---- The clock ----------------------------------------------------------------------------

  /**
   * Time passed without ticks: the driver's timer did not fire (the process stalled in GC or a slow
   * disk call, or was stopped by SIGSTOP, or its timer callbacks came late and were run as one). The
   * clock that times leases moves (the leader's lease, and the quiet period after a start): a lease
   * must not outlast real time. So does a leader's heartbeat timer: a round goes out once a heartbeat
   * interval of real time has passed, whatever the timer delivered (a round more is harmless). A busy
   * leader's timer callbacks run late and together, each one tick: at 256 KB values its rounds went
   * out 110-230 ms apart instead of 50, and followers, whose own timers kept time, campaigned
   * (BENCHMARKS.md). Election and check-quorum timers are left as they are, so that a stall does not
   * by itself end a leadership or start an election; a stalled leader's followers time out on their
   * own clocks anyway.
   */
  elapse(ticks: number): void {
    assert(Number.isSafeInteger(ticks) && ticks >= 0, `elapse(${ticks})`);
    this.nowTicks += ticks;
    if (this.role === "leader" && ticks > 0) this.heartbeatTimerElapse(ticks);
  }

  /** Leader: moves the heartbeat timer on by `ticks`; a round goes out once it reaches heartbeatTicks. */
  private heartbeatTimerElapse(ticks: number): void {
    this.heartbeatElapsedTicks += ticks;
    if (this.heartbeatElapsedTicks >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsedTicks = 0;
      this.broadcastHeartbeat();
    }
  }

  /** Advances logical time by one tick. */
  tick(): void {
    this.nowTicks++;
    this.timersTick(true);
  }

  /**
   * A tick whose time `elapse` already counted (the driver made it up before its timer fired): the
   * election timer, and a leader's check-quorum and transfer timers, move as `tick` moves them; the
   * clock and a leader's heartbeat timer, which `elapse` moved, do not. The clock must not run ahead
   * of real time, or a voter's promise to its leader (`inLeaderLease`) ends early; and the election
   * timers must move with every firing, or a follower whose turns keep coming (each making its tick
   * up first) never campaigns (both found in reviews of the driver).
   */
  tickCaughtUp(): void {
    this.timersTick(false);
  }

  /** One tick of the election timer (and a leader's check-quorum, transfer and, with `heartbeat`, heartbeat timers). */
  private timersTick(heartbeat: boolean): void {
    if (this.role === "leader") {
      this.electionElapsedTicks++;
      if (this.electionElapsedTicks >= this.cfg.electionTicks) {
        this.electionElapsedTicks = 0;
        // Cut off from a majority: stop serving rather than hold writes (§6.2). Two election
        // timeouts in a row without a majority, not one: with our short timeout (120 ms by
        // default) two followers' loops held at once for a little longer (large values, a busy
        // machine) made a healthy leader step down (BENCHMARKS.md). Lease reads do not depend on
        // this: they need a round a majority acknowledged within the lease (`leaseValid`).
        if (this.cfg.checkQuorum) {
          this.roundsLed++;
          if (this.quorumActive()) this.quorumSilentChecks = 0;
          else if (++this.quorumSilentChecks >= 2) {
            this.becomeFollower(this.term, 0);
            return;
          }
        }
        this.leadTransferee = 0; // a transfer that did not finish within an election timeout is abandoned
      }
      if (heartbeat) this.heartbeatTimerElapse(1);
      this.sendDeferredCommits();
      return;
    }
    this.electionElapsedTicks++;
    // Learners and servers that do not (yet) see themselves as voters never campaign, and their
    // timer keeps running: the leader's lease (inLeaderLease) must end one election timeout after
    // it was last heard from, whatever this server's role, or a voter that has not learned it is
    // one would refuse every pre-vote forever while the leader it names is dead.
    if (this.electionElapsedTicks >= this.electionTimeoutTicks && this.isVoter(this.id)) {
      this.electionElapsedTicks = 0;
      this.campaign();
    } else if (!this.isVoter(this.id) && this.leaderId !== 0 && this.nowTicks - this.leaderHeardTick >= 2 * this.cfg.electionTicks) {
      // A server that never campaigns would name a silent leader forever, and call itself led (a
      // learner removed while its image was on its way, which no farewell reached: found in a
      // black-box review). After two election timeouts without a word, it knows of no leader
      // until the next message of one.
      this.leaderId = 0;
    }
  }

  /** Did a quorum of voters answer since the last check? Resets the marks for the next round. */
  private quorumActive(): boolean {
    let active = 0;
    for (const [member, progress] of this.progress) {
      if (this.isVoter(member) && (member === this.id || progress.recentActive)) active++;
      if (member === this.id) continue;
      progress.activeLastRound = progress.recentActive;
      progress.recentActive = false;
    }
    return active >= this.quorum();
  }

  /** Starts an election now (§5.2), first as a pre-vote rehearsal when configured. */
  campaign(): void {
    if (this.role === "leader" || !this.isVoter(this.id)) return;
    // A committed membership change not yet applied may make us no voter, or change who votes.
    if (this.log.hasUnappliedConfChange()) return;
    if (this.ownVoteHeld()) {
      this.heldVoteRefusals++;
      return;
    }
    if (this.cfg.preVote) this.startElection("pre-vote", false);
    else this.startElection("vote", false);
  }

  private startElection(kind: "vote" | "pre-vote", transfer: boolean): void {
    if (kind === "pre-vote") this.becomePreCandidate();
    else this.becomeCandidate();
    this.votes.set(this.id, true);
    if (this.quorum() === 1) {
      if (kind === "pre-vote") this.startElection("vote", transfer);
      else this.becomeLeader();
      return;
    }
    const term = kind === "pre-vote" ? this.term + 1 : this.term;
    const lastLogIndex = this.log.lastIndex();
    const lastLogTerm = this.log.lastTerm();
    const round = kind === "pre-vote" ? { round: this.preVoteRound } : {};
    for (const voter of this.voters) {
      if (voter === this.id) continue;
      this.send({ type: kind, from: this.id, to: voter, term, lastLogIndex, lastLogTerm, transfer, ...round });
    }
  }

  /**
   * A membership change is in the log and not yet applied (confirmed by the driver): a committed
   * one, or on a leader one it proposed or inherited, committed or not. The configuration is about
   * to change. Read from the entries, not from `pendingConfIndex`, which a new leader sets to its
   * last index whatever its log holds: every leader just elected answered "pending" until it had
   * applied its inherited entries, and refused leadership transfers (the CI run of this change).
   */
  confChangePending(): boolean {
    const leaderMayHoldOne = this.role === "leader" && this.pendingConfIndex > this.log.applied;
    return this.log.hasConfChangeThrough(leaderMayHoldOne ? this.log.lastIndex() : this.log.committed);
  }

  /**
   * Leader: the other voter with the highest match index (the cheapest to hand over to) among those
   * heard from in this check-quorum round or the last; any voter when none was. A voter that went
   * down keeps its last match: picked by match alone (the lowest id winning ties), a dead voter was
   * told to campaign, every retry chose it again, and removing the leader could never succeed.
   */
  mostCaughtUpFollower(): NodeId | undefined {
    let best: { id: NodeId; match: number; heard: boolean } | undefined;
    for (const [member, progress] of this.progress) {
      if (member === this.id || !this.isVoter(member)) continue;
      const heard = this.heardRecently(member);
      if (best === undefined || (heard && !best.heard) || (heard === best.heard && progress.matchIndex > best.match)) {
        best = { id: member, match: progress.matchIndex, heard };
      }
    }
    return best?.id;
  }

  /**
   * Leader: the voters that answered in this check-quorum round or the last, itself included;
   * undefined until it has led through one whole round (a live voter may not have answered yet),
   * and without check-quorum (nothing is counted by rounds).
   */
  votersHeardRecently(): NodeId[] | undefined {
    if (this.role !== "leader" || this.roundsLed === 0) return undefined;
    return this.voters.filter((voter) => voter === this.id || this.heardRecently(voter));
  }

  /** Leader: `member` answered in this check-quorum round or the last (always false elsewhere). */
  heardRecently(member: NodeId): boolean {
    const progress = this.role === "leader" ? this.progress.get(member) : undefined;
    return progress !== undefined && (progress.recentActive || progress.activeLastRound);
  }

  /**
   * Hands leadership to `target` (thesis §3.10): bring it up to date, then tell it to campaign at
   * once. Proposals are refused until it takes over or an election timeout passes.
   */
  transferLeadership(target: NodeId): void {
    if (this.role !== "leader" || target === this.id || !this.voters.includes(target)) return;
    if (this.leadTransferee === target) return;
    this.leadTransferee = target;
    this.transferredThisTerm = true; // the lease ends here, for the rest of the term (leaseValid)
    this.electionElapsedTicks = 0;
    const progress = this.progress.get(target) as Progress;
    if (progress.matchIndex === this.log.lastIndex()) this.send({ type: "timeout-now", from: this.id, to: target, term: this.term });
    else this.sendAppend(target, progress);
  }

  // ---- Client requests ----------------------------------------------------------------------

  /**
   * Appends a membership change (thesis §4.1: one server at a time) encoded by the driver as `data`.
   * Refused while an earlier change is not yet applied. Returns its index.
   */
  proposeConfChange(data: Uint8Array): number {
    if (this.role !== "leader") {
      throw new ProposalRefusedError(this.leaderId === 0 ? "no_leader" : "not_leader", this.leaderId);
    }
    if (this.leadTransferee !== 0) throw new ProposalRefusedError("leader_transfer", this.leaderId);
    if (this.pendingConfIndex > this.log.applied) throw new ProposalRefusedError("conf_change_pending", this.leaderId);
    const index = this.appendEntries([data], EntryType.ConfChange);
    this.pendingConfIndex = index;
    this.broadcastAppend();
    return index;
  }

  /**
   * The driver applied the committed membership change at `index`: from now on it is the
   * configuration. A leader that removed itself steps down; a quorum that shrank may commit more at
   * once. A change at or below the configuration in force (a snapshot restored since it was handed
   * to apply carries the configuration as of its later index) changes nothing.
   */
  applyConfChange(change: ConfChange, index: number): ConfState {
    if (index <= this.configIndex) return { voters: this.voters, learners: this.learners };
    this.configIndex = index;
    const id = change.nodeId;
    const voters = new Set(this.voters);
    const learners = new Set(this.learners);
    switch (change.type) {
      case "add-learner":
        if (!voters.has(id)) learners.add(id);
        break;
      case "promote":
        learners.delete(id);
        voters.add(id);
        break;
      case "remove":
        voters.delete(id);
        learners.delete(id);
        break;
      default:
        unreachable(change.type);
    }
    this.voters = [...voters].sort((a, b) => a - b);
    this.learners = [...learners].sort((a, b) => a - b);
    if (this.role === "leader") {
      if (!voters.has(this.id)) {
        // The others may not know yet that the removal committed (a commit goes out with the
        // leader's next append or tick, which it will not send now): told it here, as a removed
        // member is. Else, of two voters, the one left kept both as voters and waited for ever for
        // the vote of the node just removed (found in a code review).
        for (const [member, progress] of this.progress) if (member !== this.id) this.farewell(member, progress, index);
        this.becomeFollower(this.term, 0);
      } else {
        for (const member of this.members()) {
          if (!this.progress.has(member)) this.progress.set(member, new Progress(this.log.lastIndex() + 1, this.cfg.inflightMessagesMax, this.cfg.inflightBytesMax));
        }
        for (const [member, progress] of [...this.progress]) {
          if (voters.has(member) || learners.has(member)) continue;
          this.farewell(member, progress, index);
          this.progress.delete(member);
        }
        if (this.leadTransferee !== 0 && !voters.has(this.leadTransferee)) this.leadTransferee = 0;
        this.restartRounds();
        if (this.maybeCommit()) this.broadcastAppend(true);
        else this.broadcastAppend();
      }
    }
    return { voters: this.voters, learners: this.learners };
  }

  /**
   * Leader, after a configuration change: acks gathered so far were counted against the old
   * voters, so they count for nothing now. The lease ends, and pending reads wait for a quorum
   * of the new voters to acknowledge a round sent from here on (one goes out now).
   */
  private restartRounds(): void {
    this.roundsValidFrom = this.heartbeatRound + 1;
    this.ackedRound.clear();
    this.leaseStartTick = Number.NEGATIVE_INFINITY;
    for (const read of this.pendingReads) read.round = Math.max(read.round, this.roundsValidFrom);
    if (this.pendingReads.length > 0 || this.quorum() === 1) this.broadcastHeartbeat();
  }

  /**
   * Appends one entry per element of `data` to the leader's log and starts replicating them.
   * Returns the index of the first. Throws ProposalRefusedError (nothing appended) when this node
   * is not the leader or too much is already uncommitted.
   */
  propose(data: readonly Uint8Array[]): number {
    if (this.role !== "leader") {
      throw new ProposalRefusedError(this.leaderId === 0 ? "no_leader" : "not_leader", this.leaderId);
    }
    if (this.leadTransferee !== 0) throw new ProposalRefusedError("leader_transfer", this.leaderId);
    if (this.log.lastIndex() - this.log.committed + data.length > this.cfg.uncommittedEntriesMax) {
      throw new ProposalRefusedError("too_many_uncommitted", this.leaderId);
    }
    const firstIndex = this.appendEntries(data);
    this.broadcastAppend();
    return firstIndex;
  }

  /**
   * Asks for a linearizable read index (thesis §6.4). The answer comes in a later Ready as a
   * ReadState with the same context (serve the read once applied >= index) or a ReadFailure.
   */
  readIndex(readContext: string, lease = false): void {
    if (this.role === "leader" && lease && this.leaseValid() && this.log.term(this.log.committed) === this.term) {
      // Within the lease no other leader can exist: the commit index is current without a round trip.
      this.readStates.push({ readContext, index: this.log.committed });
    } else if (this.role === "leader") {
      this.leaderReadIndex(readContext, this.id);
    } else if (this.role === "follower" && this.leaderId !== 0) {
      this.send({ type: "read-index", from: this.id, to: this.leaderId, term: this.term, readContext });
    } else {
      this.readFailures.push({ readContext, reason: "no_leader" });
    }
  }

  /**
   * The lease's length: shorter than the minimum election timeout by a tick and by the drift bound.
   * The tick: a voter counts its promise from the tick under way when the heartbeat arrived, so
   * it keeps it for as little as `electionTicks - 1` ticks after (found in review: with the lease
   * at the timeout less the drift alone, a heartbeat arriving just before the voters' next tick let a
   * new leader commit while this one still served lease reads, at 12 ticks with this clock 19% slow,
   * at 5 ticks 2% slow; test/raft-lease-ticks.test.ts). Zero or less: no lease at all.
   */
  private leaseTicks(): number {
    return this.cfg.electionTicks - 1 - (this.cfg.leaseDriftTicks ?? Math.max(1, Math.ceil(this.cfg.electionTicks / 5)));
  }

  /**
   * Leader: may it answer reads from its own state now (thesis §6.4.1)? Voters that acknowledged a
   * heartbeat sent at tick T refuse any other candidate until an election timeout after they got it,
   * so none can win before T + electionTicks (by their clocks). Never during a transfer, which
   * deliberately lets another win early.
   */
  leaseValid(): boolean {
    return (
      this.role === "leader" &&
      this.cfg.checkQuorum &&
      this.leadTransferee === 0 &&
      !this.transferredThisTerm &&
      this.nowTicks < this.leaseStartTick + this.leaseTicks()
    );
  }

  /** Numbers a new heartbeat round and notes when it was sent; returns its number. */
  private nextRound(): number {
    const round = ++this.heartbeatRound;
    this.roundSentTick.set(round, this.nowTicks);
    // Rounds older than a lease can no longer extend it (the map is in insertion, so round, order).
    for (const [old, sent] of this.roundSentTick) {
      if (sent + this.leaseTicks() > this.nowTicks) break;
      this.roundSentTick.delete(old);
    }
    if (this.quorum() === 1) this.roundConfirmed(round);
    return round;
  }

  /**
   * The newest round a quorum of current voters acknowledged (this leader counts as acknowledging
   * every round it sent), or 0. Only current voters count: a removed member's acks do not.
   */
  private quorumRound(): number {
    const rounds = this.voters.map((voter) => (voter === this.id ? this.heartbeatRound : (this.ackedRound.get(voter) ?? 0))).sort((a, b) => b - a);
    const round = rounds[this.quorum() - 1] as number;
    return round >= this.roundsValidFrom ? round : 0;
  }

  /** A quorum followed us after `round` was sent: renew the lease, release the reads it covers. */
  private roundConfirmed(round: number): void {
    const sent = this.roundSentTick.get(round);
    if (sent !== undefined && sent > this.leaseStartTick && !this.transferredThisTerm) this.leaseStartTick = sent;
    let released = 0;
    while (released < this.pendingReads.length && (this.pendingReads[released] as PendingRead).round <= round) released++;
    if (released === 0) return;
    for (const read of this.pendingReads.splice(0, released)) this.releaseRead(read);
  }

  private leaderReadIndex(readContext: string, from: NodeId): void {
    if (this.log.term(this.log.committed) !== this.term) {
      // Until an entry of this term commits, the leader's commit index may trail the true one.
      this.readsBeforeTermCommit.push({ readContext, from });
      return;
    }
    if (this.quorum() === 1) {
      this.releaseRead({ readContext, index: this.log.committed, from, round: 0 });
      return;
    }
    // Only a round sent from now on can confirm this read: the next one, which `sendReadRound`
    // sends before the driver's next Ready unless a heartbeat round goes out first. Reads that
    // arrive together (the node's own batch, followers' requests stepped in the same turn) share it.
    this.pendingReads.push({ readContext, index: this.log.committed, from, round: this.heartbeatRound + 1 });
  }

  /**
   * Sends the heartbeat round the pending reads wait for, if none has gone out since they arrived.
   * RawNode calls it before it reports or hands over messages, so a read never waits for a tick.
   */
  sendReadRound(): void {
    // Reads are pushed in order with rounds that never decrease: the last one waits the longest.
    const last = this.pendingReads[this.pendingReads.length - 1];
    if (this.role === "leader" && last !== undefined && last.round > this.heartbeatRound) this.broadcastHeartbeat();
  }

  private releaseRead(read: PendingRead): void {
    if (read.from === this.id) {
      this.readStates.push({ readContext: read.readContext, index: read.index });
    } else {
      this.send({
        type: "read-index-response",
        from: this.id,
        to: read.from,
        term: this.term,
        readContext: read.readContext,
        index: read.index,
        rejected: false,
      });
    }
  }

  private failPendingReads(reason: ReadFailure["reason"]): void {
    const failed = [...this.pendingReads, ...this.readsBeforeTermCommit];
    this.pendingReads = [];
    this.readsBeforeTermCommit = [];
    for (const read of failed) {
      if (read.from === this.id) {
        this.readFailures.push({ readContext: read.readContext, reason });
      } else {
        this.messages.push({
          type: "read-index-response",
          from: this.id,
          to: read.from,
          term: this.term,
          readContext: read.readContext,
          index: 0,
          rejected: true,
        });
      }
    }
  }

  // ---- Messages -----------------------------------------------------------------------------

  /** Feeds one message from a peer into the core. Bad or stale input is ignored, never trusted. */
  step(m: Message): void {
    // Messages from servers outside our configuration are accepted: a joining server hears from a
    // leader it does not know yet. Answers from non-members find no progress and are dropped, and
    // only voters' votes count.
    if (m.to !== this.id || m.from === this.id || m.from < 1) return;
    if (m.term > this.term) {
      if ((m.type === "vote" || m.type === "pre-vote") && !m.transfer && this.inLeaderLease()) {
        // We heard from a leader within the minimum election timeout: a higher-term campaign is a
        // disruptive server (one that was partitioned away), not a dead leader. Ignore it (thesis §4.2.3).
        return;
      }
      if (m.type === "pre-vote" || (m.type === "pre-vote-response" && m.granted)) {
        // A pre-vote never changes anyone's term; a granted answer carries the rehearsed term.
      } else {
        // A rejected read-index answer is no leader's: a leader deposed by this very term rejects
        // the reads it held, in the new term (found in review: the follower took it for that term's
        // leader, refused the real candidate's vote and sent its reads there).
        this.becomeFollower(m.term, fromLeader(m) ? m.from : 0);
      }
    } else if (m.term < this.term) {
      // A stale leader or candidate learns our term from the answer and steps down (§5.1).
      if (m.type === "append" || m.type === "heartbeat" || m.type === "snapshot") {
        this.send({ type: "append-response", from: this.id, to: m.from, term: this.term, success: false, index: 0, hintIndex: 0, hintTerm: 0 });
      } else if (m.type === "vote" || m.type === "pre-vote") {
        this.send({ type: m.type === "vote" ? "vote-response" : "pre-vote-response", from: this.id, to: m.from, term: this.term, granted: false });
      }
      return;
    }

    switch (m.type) {
      case "vote":
      case "pre-vote":
        return this.handleVote(m);
      case "vote-response":
      case "pre-vote-response":
        return this.handleVoteResponse(m);
      case "timeout-now":
        return this.handleTimeoutNow();
      case "snapshot":
        return this.handleSnapshot(m);
      case "append":
        return this.handleAppend(m);
      case "append-response":
        return this.handleAppendResponse(m);
      case "heartbeat":
        return this.handleHeartbeat(m);
      case "heartbeat-response":
        return this.handleHeartbeatResponse(m);
      case "read-index":
        return this.handleReadIndex(m);
      case "read-index-response":
        return this.handleReadIndexResponse(m);
      default:
        return unreachable(m);
    }
  }

  private send(m: Message): void {
    this.messages.push(m);
  }

  /**
   * True while a leader was heard from within the minimum election timeout (a leader counts itself
   * in its own lease). Measured from when it was heard, not by whom we follow now: a stale answer of
   * a higher term (a rejected pre-vote of ours delivered late, say) clears `leaderId` but not the
   * promise, and a vote granted in that term let another leader commit while the one we had just
   * acknowledged still served lease reads (found in review: a stale lease read).
   */
  private inLeaderLease(): boolean {
    if (!this.cfg.checkQuorum) return false;
    // A server that just started may have acknowledged a lease before it went down: it honours
    // one full election timeout before voting, since it cannot remember whom it heard from.
    if (this.nowTicks < this.cfg.electionTicks) return true;
    if (this.role === "leader") return true;
    return this.nowTicks - this.leaderHeardTick < this.cfg.electionTicks;
  }

  /**
   * §5.2, §5.4.1: grant at most one vote per term, and only to a candidate at least as up to date.
   * A pre-vote (for a higher term) is granted on the log check alone and records nothing.
   */
  private handleVote(m: VoteRequest): void {
    const responseType = m.type === "vote" ? "vote-response" : "pre-vote-response";
    // Within a leader's lease no other candidate gets a vote, in this term either (a higher-term
    // request is dropped in `step`): only one the leader itself sent on (`transfer`), or a repeat.
    const leased = !m.transfer && this.vote !== m.from && this.inLeaderLease();
    const canVote =
      !leased && (this.vote === m.from || (this.vote === 0 && this.leaderId === 0) || (m.type === "pre-vote" && m.term > this.term));
    const eligible = canVote && this.log.isUpToDate(m.lastLogIndex, m.lastLogTerm);
    const granted = eligible && this.heldVoteAllowed(m.lastLogTerm, m.lastLogIndex);
    if (eligible && !granted) this.heldVoteRefusals++;
    if (granted && m.type === "vote") {
      this.vote = m.from;
      this.electionElapsedTicks = 0;
    }
    // A granted pre-vote answers in the rehearsed term, so the candidate can tell it from a stale one.
    this.send({ type: responseType, from: this.id, to: m.from, term: granted ? m.term : this.term, granted, ...(m.round === undefined ? {} : { round: m.round }) });
  }

  private handleVoteResponse(m: VoteResponse): void {
    if (this.role !== "candidate" || !this.isVoter(m.from)) return;
    if ((m.type === "pre-vote-response") !== this.preCandidate) return; // an answer to an earlier phase
    if (this.preCandidate && m.granted && m.term !== this.term + 1) return;
    // Every round of ours in this term asks for the same term: an answer to an earlier round (a
    // grant delayed past the next round, which that voter may refuse, found in review) counts not.
    if (this.preCandidate && m.round !== undefined && m.round !== this.preVoteRound) return;
    if (!this.votes.has(m.from)) this.votes.set(m.from, m.granted);
    let granted = 0;
    let rejected = 0;
    for (const vote of this.votes.values()) {
      if (vote) granted++;
      else rejected++;
    }
    if (granted >= this.quorum()) {
      if (this.preCandidate) {
        this.startElection("vote", false);
      } else {
        this.becomeLeader();
        this.broadcastAppend();
      }
    } else if (rejected >= this.quorum()) {
      this.becomeFollower(this.term, 0);
    }
  }

  /** Our leader handed over to us: campaign now, skipping the pre-vote, with voters' leases set aside. */
  private handleTimeoutNow(): void {
    if (this.role === "leader" || !this.isVoter(this.id) || this.log.hasUnappliedConfChange() || this.ownVoteHeld()) return;
    this.startElection("vote", true);
  }

  /** A current-term leader's message: recognise it and restart the election timer. */
  /**
   * A current-term leader's message: recognise it and restart the election timer. Returns false,
   * and the message is ignored, when we lead this term ourselves: election safety (§5.2) makes
   * that impossible from a correct peer, so it is forged or buggy input, never a reason to crash.
   */
  private followLeader(from: NodeId): boolean {
    if (this.role === "leader") return false;
    if (this.role === "candidate") this.becomeFollower(this.term, from);
    this.leaderId = from;
    this.electionElapsedTicks = 0;
    this.leaderHeardTick = this.nowTicks;
    if (this.voteHold !== undefined && this.voteHold.term === undefined) this.voteHold.term = this.term;
    return true;
  }

  /** §5.3: the consistency check, then append and advance commit. */
  private handleAppend(m: AppendRequest): void {
    if (!this.followLeader(m.from)) return;
    // An append carries its leader's whole commit index (a heartbeat's is capped by our match).
    this.leaderCommit = Math.max(this.leaderCommit, m.commit);
    const reply = { type: "append-response", from: this.id, to: m.from, term: this.term } as const;
    if (m.prevLogIndex < this.log.committed) {
      const conflict = this.committedConflict(m);
      if (conflict !== undefined) {
        // No answer: "success at our commit" would make the leader count entries we do not share.
        this.lostLogSeen ??= { leaderId: m.from, term: this.term, acknowledged: this.log.committed, lastIndex: this.log.lastIndex(), conflict };
        return;
      }
      // Everything up to commit is known to match; answer so the leader can move on.
      this.send({ ...reply, success: true, index: this.log.committed, hintIndex: 0, hintTerm: 0 });
      return;
    }
    const lastNewIndex = this.log.maybeAppend(m.prevLogIndex, m.prevLogTerm, m.commit, m.entries);
    if (lastNewIndex !== undefined) {
      this.send({ ...reply, success: true, index: lastNewIndex, hintIndex: 0, hintTerm: 0 });
      return;
    }
    const hint = this.log.findConflictByTerm(m.prevLogIndex, m.prevLogTerm);
    this.send({ ...reply, success: false, index: m.prevLogIndex, hintIndex: hint.index, hintTerm: hint.term });
  }

  /**
   * Where an append's entries differ from ours at an index we committed, if they do. A correct
   * leader's log holds every committed entry (leader completeness), so this is a cluster that lost
   * entries we committed: a review saw a follower keep them, answer its leader
   * "matched up to my commit" to every probe, and have it resend the log at 10 MB/s, while the
   * follower served them and said it was healthy.
   */
  private committedConflict(m: AppendRequest): LostLog["conflict"] {
    const committed = this.log.committed;
    // Only entries count, not the previous index's term: a correct leader's probes carry entries,
    // and a decodable forgery naming a wrong term there stopped a node (the peer fuzzer), where bad
    // input is ignored (see `step`).
    for (const entry of m.entries) {
      if (entry.index > committed) break;
      const ours = this.log.term(entry.index);
      if (ours !== undefined && ours !== entry.term) return { index: entry.index, ourTerm: ours, leaderTerm: entry.term };
    }
    return undefined;
  }

  private handleAppendResponse(m: AppendResponse): void {
    if (this.role !== "leader") return;
    const progress = this.progress.get(m.from);
    // A correct follower only answers appends this leader sent, and a leader never truncates its
    // own log: an index beyond it is forged or corrupt. Believing it would stop replication to
    // that follower for good (its progress would claim entries it never got).
    if (progress === undefined || m.index > this.log.lastIndex()) return;
    progress.recentActive = true;
    if (!m.success) {
      if (m.index === 0 && m.hintIndex === 0) return; // a stale-term rejection carries no log information
      // Skip back past the follower's conflicting term in one step, using our own log (thesis §5.3).
      let nextProbe = m.hintIndex;
      if (m.hintTerm > 0) nextProbe = this.log.findConflictByTerm(m.hintIndex, m.hintTerm).index;
      if (progress.maybeDecrTo(m.index, nextProbe)) this.sendAppend(m.from, progress);
      return;
    }
    const wasPaused = progress.isPaused();
    const updated = progress.maybeUpdate(m.index);
    if (progress.state === "snapshot" && progress.matchIndex >= progress.pendingSnapshotIndex) {
      progress.becomeProbe(); // the follower installed it: resume from just past it
      progress.becomeReplicate();
      this.sendAppend(m.from, progress);
      return;
    }
    if (!updated) {
      if (wasPaused && !progress.isPaused()) this.sendAppend(m.from, progress);
      return;
    }
    if (progress.state === "probe") progress.becomeReplicate();
    if (m.from === this.leadTransferee && progress.matchIndex === this.log.lastIndex()) {
      this.send({ type: "timeout-now", from: this.id, to: m.from, term: this.term });
    }
    if (this.maybeCommit()) {
      // New entries go out now. A commit index alone waits for the next append (under load, within
      // the turn) or at most one tick (see tick): one call per write instead of two at low load.
      this.broadcastAppend();
    } else if (progress.matchIndex < this.log.lastIndex()) {
      this.sendAppend(m.from, progress);
    }
  }

  /** InstallSnapshot (thesis §5.1): restore from the leader's image unless our log already covers it. */
  private handleSnapshot(m: SnapshotRequest): void {
    if (!this.followLeader(m.from)) return;
    const reply = { type: "append-response", from: this.id, to: m.from, term: this.term, hintIndex: 0, hintTerm: 0 } as const;
    const { index, term } = m.snapshot;
    if (index <= this.log.committed) {
      this.send({ ...reply, success: true, index: this.log.committed });
    } else if (this.log.matchTerm(index, term)) {
      // Our log holds the snapshot's last entry: everything up to it matches; just commit.
      this.log.commitTo(index);
      this.send({ ...reply, success: true, index });
    } else {
      this.log.restore({ metadata: m.snapshot, imageId: m.imageId });
      // The snapshot carries the configuration as of its index: it replaces ours (and a change
      // handed to apply before, whose answer comes later, no longer applies: see applyConfChange).
      this.configIndex = index;
      this.voters = m.snapshot.voters.slice().sort((a, b) => a - b);
      this.learners = (m.snapshot.learners ?? []).filter((id) => !this.voters.includes(id)).sort((a, b) => a - b);
      this.send({ ...reply, success: true, index });
    }
  }

  /**
   * The driver is still streaming a snapshot to `to`: a long transfer must not make the leader give
   * up on it (after snapshotHeartbeatsMax rounds) and ask for another one meanwhile.
   */
  reportSnapshotInProgress(to: NodeId): void {
    if (this.role === "leader") this.progress.get(to)?.snapshotStillSending();
  }

  /** The driver could not deliver the snapshot to `to` (or the follower could not stage it): probe again. */
  reportSnapshotFailure(to: NodeId): void {
    const progress = this.progress.get(to);
    if (this.role !== "leader" || progress === undefined || progress.state !== "snapshot") return;
    progress.pendingSnapshotIndex = 0;
    progress.becomeProbe();
  }

  private handleHeartbeat(m: HeartbeatRequest): void {
    if (!this.followLeader(m.from)) return;
    // A heartbeat's commit is at most what we acknowledged to this leader: past our log's end, we lost entries.
    if (m.commit > this.log.lastIndex()) this.lostLogSeen ??= { leaderId: m.from, term: this.term, acknowledged: m.commit, lastIndex: this.log.lastIndex() };
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    this.send({ type: "heartbeat-response", from: this.id, to: m.from, term: this.term, readContext: m.readContext });
  }

  private handleHeartbeatResponse(m: HeartbeatResponse): void {
    if (this.role !== "leader") return;
    const progress = this.progress.get(m.from);
    if (progress === undefined) return;
    progress.recentActive = true;
    const round = /^[1-9][0-9]{0,15}$/.test(m.readContext) ? Number(m.readContext) : 0;
    // An answer opens the follower's flow control (and counts a round for its lost appends or
    // snapshot) when it answers the newest round, or else at most once a heartbeat interval. A
    // follower back from a freeze (a full disk, SIGSTOP) answers every heartbeat it held at once:
    // each answer freed a slot and sent another append of up to 1 MiB read from the log, a burst
    // that held the leader's loop for 1-2 s (found in a black-box review).
    const newest = round !== 0 && round === this.heartbeatRound;
    if (newest || this.nowTicks - progress.heartbeatOpenedTick >= this.cfg.heartbeatTicks) {
      progress.heartbeatOpenedTick = this.nowTicks;
      progress.heartbeatAnswered();
      if (progress.matchIndex < this.log.lastIndex()) this.sendAppend(m.from, progress);
    }
    // A learner's answer confirms nothing; a context that is not one of our round numbers is
    // forged, or an answer to another leader's heartbeat (an earlier release used other contexts).
    if (!this.isVoter(m.from) || round < this.roundsValidFrom || round > this.heartbeatRound) return;
    if ((this.ackedRound.get(m.from) ?? 0) >= round) return;
    this.ackedRound.set(m.from, round);
    const confirmed = this.quorumRound();
    if (confirmed > 0) this.roundConfirmed(confirmed);
  }

  private handleReadIndex(m: ReadIndexRequest): void {
    if (this.role !== "leader") {
      this.send({ type: "read-index-response", from: this.id, to: m.from, term: this.term, readContext: m.readContext, index: 0, rejected: true });
      return;
    }
    this.leaderReadIndex(m.readContext, m.from);
  }

  private handleReadIndexResponse(m: ReadIndexResponse): void {
    if (m.rejected) {
      this.readFailures.push({ readContext: m.readContext, reason: "not_leader" });
    } else {
      this.readStates.push({ readContext: m.readContext, index: m.index });
    }
  }

  // ---- Leader replication -------------------------------------------------------------------

  private appendEntries(data: readonly Uint8Array[], type = EntryType.Normal): number {
    const firstIndex = this.log.lastIndex() + 1;
    const entries: Entry[] = data.map((bytes, i) => ({
      term: this.term,
      index: firstIndex + i,
      type,
      data: bytes,
    }));
    this.log.append(entries);
    // The leader's own copy counts toward commit only once the driver reports it on disk
    // (`persisted`): its fsync may finish after the followers' (thesis §10.2.1).
    return firstIndex;
  }

  /**
   * The driver made this node's log durable up to (`index`, `term`): entries up to it may be applied
   * once committed, and a leader counts its own copy toward commit from here. A report that no
   * longer matches the log (it was overwritten) changes nothing, nor does one to a leader's progress
   * after it stopped leading.
   */
  persisted(index: number, term: number): void {
    this.log.durableTo(index, term);
    if (this.role !== "leader" || !this.log.matchTerm(index, term)) return;
    const own = this.progress.get(this.id);
    if (own !== undefined && own.maybeUpdate(index)) this.maybeCommit();
  }

  /** Commits the highest index a quorum holds, if it is of the current term (§5.4.2). */
  private maybeCommit(): boolean {
    const matched = this.voters.map((voter) => this.progress.get(voter)?.matchIndex ?? 0).sort((a, b) => b - a);
    const quorumIndex = matched[this.quorum() - 1] as number;
    const committed = this.log.maybeCommit(quorumIndex, this.term);
    if (committed && this.readsBeforeTermCommit.length > 0 && this.log.term(this.log.committed) === this.term) {
      const waiting = this.readsBeforeTermCommit;
      this.readsBeforeTermCommit = [];
      for (const read of waiting) this.leaderReadIndex(read.readContext, read.from);
    }
    return committed;
  }

  /** Tells each follower a commit index it has not been sent yet (see handleAppendResponse). */
  private sendDeferredCommits(): void {
    const committed = this.log.committed;
    for (const [member, progress] of this.progress) {
      if (member !== this.id && progress.sentCommit < Math.min(committed, progress.matchIndex)) this.sendAppend(member, progress, true);
    }
  }

  private broadcastAppend(sendIfEmpty = false): void {
    for (const [voter, progress] of this.progress) {
      if (voter !== this.id) this.sendAppend(voter, progress, sendIfEmpty);
    }
  }

  private sendAppend(to: NodeId, progress: Progress, sendIfEmpty = false): void {
    if (progress.isPaused()) return;
    const prevLogIndex = progress.nextIndex - 1;
    const prevLogTerm = this.log.term(prevLogIndex);
    if (prevLogTerm === undefined || progress.nextIndex < this.log.firstIndex()) {
      // The entries this follower needs were compacted away: send the state machine instead (§5.1).
      const snapshot = this.cfg.storage.snapshotForSend();
      if (snapshot === undefined) return; // none can be made now; the next heartbeat answer retries
      this.send({ type: "snapshot", from: this.id, to, term: this.term, snapshot, imageId: "" });
      progress.becomeSnapshot(snapshot.index);
      return;
    }
    const lastIndex = this.log.lastIndex();
    const entries = progress.nextIndex <= lastIndex ? this.log.slice(progress.nextIndex, lastIndex + 1, this.cfg.appendBytesMax) : [];
    if (progress.state === "replicate" && entries.length === 0 && !sendIfEmpty) return; // nothing new to say
    this.send({ type: "append", from: this.id, to, term: this.term, prevLogIndex, prevLogTerm, entries, commit: this.log.committed });
    let bytes = 0;
    for (const entry of entries) bytes += entry.data.byteLength;
    progress.sentAppend(entries[entries.length - 1]?.index, bytes);
    progress.sentCommit = this.log.committed;
  }

  /**
   * Leader: a member removed by the change at `index` gets one last message before it is no longer
   * replicated to, carrying the commit index that covers its removal: a commit index alone goes out
   * with the next append or tick, by which time the member is gone from `progress`, so it never
   * applied its removal and campaigned on (its pre-votes never granted). A heartbeat when it
   * holds the entry; otherwise, while it is replicating, what it lacks up to the entry, if still in
   * the log and within one append's bytes. Best effort: a member cut off then may never hear of it (thesis §4.2.3).
   */
  private farewell(to: NodeId, progress: Progress, index: number): void {
    if (progress.matchIndex >= index) {
      this.send({ type: "heartbeat", from: this.id, to, term: this.term, commit: Math.min(progress.matchIndex, this.log.committed), readContext: "" });
      return;
    }
    // Only where its match is known (a new leader's is 0 until the member answers: such an append
    // would be refused, after reading up to a whole append's entries for nothing).
    if (progress.state !== "replicate") return;
    const prevLogTerm = this.log.term(progress.matchIndex);
    if (prevLogTerm === undefined || progress.matchIndex + 1 < this.log.firstIndex()) return;
    const entries = this.log.slice(progress.matchIndex + 1, index + 1, this.cfg.appendBytesMax);
    this.send({ type: "append", from: this.id, to, term: this.term, prevLogIndex: progress.matchIndex, prevLogTerm, entries, commit: this.log.committed });
  }

  /** The evidence that this node lost acknowledged entries, once a heartbeat showed it (see LostLog). */
  lostLog(): LostLog | undefined {
    return this.lostLogSeen;
  }

  /** Sends a new heartbeat round to every member. */
  private broadcastHeartbeat(): void {
    const readContext = String(this.nextRound());
    // Learners get heartbeats too (they keep following), but only voters' answers confirm reads.
    for (const [voter, progress] of this.progress) {
      if (voter === this.id) continue;
      const commit = Math.min(progress.matchIndex, this.log.committed);
      this.send({ type: "heartbeat", from: this.id, to: voter, term: this.term, commit, readContext });
      progress.sentCommit = Math.max(progress.sentCommit, commit);
    }
  }
}
