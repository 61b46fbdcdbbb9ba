import { assert } from "../lib/assert.ts";
import { KvError } from "../lib/kv-error.ts";
import type { RawNode } from "../raft/raw-node.ts";
import { ProposalRefusedError, type Entry, type NodeId } from "../raft/types.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import { encodeMembershipChange, type MembershipChange } from "../kv/command.ts";
import type { MemberAddress, Membership } from "../kv/membership.ts";
import type { KvStorage } from "../storage/kv-storage.ts";
import type { MembersView, MemberStatus } from "./api.ts";
import { proposalDropped } from "./proposals.ts";
import { timeoutError, type Waiter } from "./waiter.ts";

/** A membership change proposed here, waiting to be applied. */
interface PendingConfChange extends Waiter<MembersView> {
  readonly index: number;
  readonly term: number;
}

/** What the membership room needs from the node loop that owns it. */
export interface MembershipHost {
  readonly id: NodeId;
  /** `--cluster` as this node reaches each peer (see `KvNodeConfig.peers`). */
  readonly peers: ReadonlyMap<NodeId, string>;
  /** The transport's peer map, kept filled with every other member's peer URL. */
  readonly peerDirectory: Map<NodeId, string> | undefined;
  readonly storage: KvStorage;
  log?(event: string, fields: Record<string, unknown>): void;
  /** The core, once created (after the configuration is bootstrapped). */
  raw(): RawNode;
  /** Throws the error a request gets when the node cannot serve (stopped, full disk, removed). */
  refuseUnlessRunning(): void;
  notLeader(): KvError;
  /**
   * Resolves once this node has confirmed, by a heartbeat round, that it still leads, and applied
   * every entry committed before (a linearizable read's barrier); rejects with a retryable refusal
   * otherwise. Nothing is proposed.
   */
  confirmLeadership(): Promise<void>;
  /** Hands leadership to the most caught-up voter; resolves with the new leader. */
  transferLeadership(): Promise<{ leaderId: NodeId }>;
  httpUrlOf(id: NodeId): string | undefined;
  deadline(): number;
  scheduleTurn(): void;
  stopped(): boolean;
  /** Length of one tick in ms: the promotion lag is counted in time, not ticks (see `maybePromoteLearner`). */
  readonly tickMs: number;
  /** This node has just learned it was removed: what it serves from its own state (watch streams) ends. */
  removed(): void;
}

/**
 * A learner caught up with the leader's commit index of about this long ago is promoted: kept as
 * that many ticks of commit indexes (at least two), so --tick-ms 1 or 100 keep the same lag (found in
 * a review: counted in ticks, it was 10 ms at --tick-ms 1, and a learner 25 ms behind stayed one).
 */
const promotionLagMs = 100;

/**
 * Membership (thesis §4.1, one server at a time): the configuration recorded at start, changes
 * proposed here and how they settle, the address book the transport reaches members by, the
 * leader's promotion of caught-up learners, and this node's own removal.
 */
export class NodeMembership {
  /** Every member's addresses as this node reaches them: the recorded ones, overridden by `peers`. */
  private readonly addresses = new Map<NodeId, MemberAddress>();
  /** The recorded address each --cluster override was said for (see `refreshAddresses`). */
  private readonly overridesSaid = new Map<NodeId, string>();
  private pending: PendingConfChange | undefined;
  /** The leader's commit index at each of the last `promotionLagTicks` ticks, oldest first (see `maybePromoteLearner`). */
  private readonly recentCommits: number[] = [];
  /** Set once this node applied its own removal: it serves no more requests (but keeps running). */
  private removedHere = false;
  /**
   * Ex-members still in the transport's peer map, and until when (undefined: from the next
   * `expire` on, for `departedKeptMs`): the leader's last message to a member it removed (see
   * Raft.farewell) goes out in a later Ready, after the change applied here.
   */
  private readonly departed = new Map<NodeId, number | undefined>();

  /**
   * Records the configuration on first start (the voters `--cluster` names, checked against those
   * recorded at bootstrap while no change was applied); afterwards the recorded one wins.
   */
  constructor(private readonly host: MembershipHost) {
    const recorded = host.storage.membership();
    if (recorded.changedIndex === 0) {
      // Founding members: named by --cluster before any change (see `MemberAddress.addedIndex`).
      const flagAddresses = [...host.peers].map(([id, peerUrl]) => ({ id, peerUrl, addedIndex: 0 }));
      // Never changed: --cluster names the voters (checked against those recorded at bootstrap).
      const voters = [...host.peers.keys()].sort((a, b) => a - b);
      assert(voters.includes(host.id), `node ${host.id} is not among the peers`);
      host.storage.bootstrap(voters, flagAddresses);
    } else {
      // The recorded configuration (as of the applied index) wins over --cluster from here on.
      const flagVoters = [...host.peers.keys()].sort((a, b) => a - b).join(",");
      if (host.peers.size > 1 && flagVoters !== recorded.voters.join(",")) {
        host.log?.("membership", {
          detail: `using the configuration recorded at index ${recorded.changedIndex} (voters ${recorded.voters.join(",")}, learners ${recorded.learners.join(",") || "none"}), not the voters given by --cluster (${flagVoters})`,
        });
      }
    }
    this.refreshAddresses();
    this.removedHere = this.recordedWithout();
    if (this.removedHere) host.log?.("removed", { detail: "the recorded configuration does not include this node: it was removed; it serves no requests" });
  }

  /** The recorded configuration (past bootstrap) leaves this node out. */
  private recordedWithout(): boolean {
    const now = this.host.storage.membership();
    return now.changedIndex > 0 && !now.voters.includes(this.host.id) && !now.learners.includes(this.host.id);
  }

  /**
   * An image was installed: its configuration replaced the recorded one, and decides whether this
   * node is a member. Only applied changes moved the flag before: a node joining again under its id
   * that replayed its old removal and then caught up by an image (its new addition inside it) refused
   * every request for good, and one that installed an image taken after its removal served on.
   */
  snapshotInstalled(): void {
    this.refreshAddresses();
    const removed = this.recordedWithout();
    if (removed === this.removedHere) return;
    this.markRemoved(removed);
    const { changedIndex } = this.host.storage.membership();
    if (removed) this.host.log?.("removed", { detail: `the image installed leaves this node out (configuration of index ${changedIndex}): it was removed; it serves no more requests`, index: changedIndex });
    else this.host.log?.("member again", { detail: `the image installed lists this node (configuration of index ${changedIndex}): it serves requests`, index: changedIndex });
  }

  /**
   * A peer refused this node's call as from a node removed from the configuration it applied
   * (src/transport/connect-transport.ts `refuseRemoved`): the removal is committed, though this node
   * has not applied it, and may never (a learner removed while its image was on its way). It stops
   * serving as if it had. Applying its own addition again (a later entry, or an image listing it)
   * makes it a member again, as for a removal it applied.
   */
  removedByPeer(by: NodeId, detail: string): void {
    // A leader holds every committed entry, its own removal included, and steps down when it applies
    // it: a peer that says otherwise is wrong, and a leader that stopped serving on its word would
    // hold the cluster without serving it (found in review).
    if (this.removedHere || this.host.stopped() || this.host.raw().basicStatus().role === "leader") return;
    this.markRemoved(true);
    this.host.log?.("removed", { detail: `node ${by} refused this node's call: ${detail}`, by });
  }

  /** Sets whether this node is removed; once it becomes so, the host ends what it serves from its own state. */
  private markRemoved(removed: boolean): void {
    const was = this.removedHere;
    this.removedHere = removed;
    if (removed && !was) this.host.removed();
  }

  /** Whether this node was removed from the cluster. */
  removed(): boolean {
    return this.removedHere;
  }

  view(): MembersView {
    const raw = this.host.raw();
    return { members: this.statuses(), leaderId: raw.basicStatus().leaderId, configIndex: this.host.storage.membership().changedIndex };
  }

  statuses(): MemberStatus[] {
    const raw = this.host.raw();
    return raw
      .members()
      .sort((a, b) => a - b)
      .map((id) => {
        const address = this.addresses.get(id);
        return {
          id,
          peerUrl: address?.peerUrl ?? "",
          httpUrl: this.host.httpUrlOf(id) ?? address?.httpUrl,
          role: raw.isVoter(id) ? "voter" : "learner",
          ...(address?.addedIndex === undefined ? {} : { addedIndex: address.addedIndex }),
        };
      });
  }

  async add(id: NodeId, peerUrl: string, httpUrl?: string): Promise<MembersView> {
    // Only the leader's configuration is current: a follower behind would call a removed node a
    // member (swarm seed 1330: a joiner took that stale answer, configuration index 0, as its own).
    // And "already a member" only once this leader confirmed it leads (see currentLeader).
    let raw = this.leaderNow();
    if (raw.members().includes(id)) raw = await this.currentLeader();
    if (raw.members().includes(id)) {
      return Promise.reject(new KvError("member_exists", `node ${id} is already a ${raw.isVoter(id) ? "voter" : "learner"}`));
    }
    // A cluster's peers all speak TLS or none does (--tls-cert sets a node's peer port to https):
    // an http URL in a TLS cluster sent the cluster token and the log in cleartext to whatever
    // answered there (found in a review), and an https one in a plain cluster reaches nobody.
    const members = this.statuses();
    const ownUrl = members.find((member) => member.id === this.host.id)?.peerUrl ?? "";
    if (URL.canParse(ownUrl) && URL.canParse(peerUrl) && new URL(ownUrl).protocol !== new URL(peerUrl).protocol) {
      const scheme = new URL(ownUrl).protocol.slice(0, -1);
      return Promise.reject(new KvError("bad_request", `peer URL ${peerUrl} is not ${scheme}, as this cluster's peers are (this node's is ${ownUrl}): give the new member's ${scheme} URL`));
    }
    // Calls to it would reach that member instead (as etcd refuses a peer URL that exists).
    const holder = members.find((member) => sameUrl(member.peerUrl, peerUrl));
    if (holder !== undefined) {
      return Promise.reject(new KvError("bad_request", `peer URL ${peerUrl} is node ${holder.id}'s: give every member its own peer URL`));
    }
    return this.propose({ type: "add-learner", nodeId: id, peerUrl, ...(httpUrl === undefined ? {} : { httpUrl }) });
  }

  async promote(id: NodeId): Promise<MembersView> {
    let raw = this.leaderNow();
    if (!raw.basicStatus().learners.includes(id)) raw = await this.currentLeader();
    if (!raw.basicStatus().learners.includes(id)) {
      const what = raw.isVoter(id) ? "already a voter" : "not a member";
      return Promise.reject(new KvError(raw.isVoter(id) ? "member_exists" : "not_found", `node ${id} is ${what}`));
    }
    // A voter that cannot keep up (or is not there at all) only makes majorities harder to reach:
    // as etcd, promote a learner only once it holds 90% of the log (the leader promotes it on its
    // own once it has caught up with the commit index).
    const match = raw.matchIndexOf(id) ?? 0;
    const commit = raw.basicStatus().commit;
    if (match < Math.floor(commit * learnerReadyShare)) {
      return Promise.reject(
        new KvError(
          "learner_not_ready",
          `node ${id} has ${match} of the ${commit} committed entries as this leader knows: it is promoted on its own once it has caught up (is it running and reachable at its peer URL? a leader just elected learns a learner's progress within a heartbeat)`,
        ),
      );
    }
    if (!raw.heardRecently(id)) {
      return Promise.reject(
        new KvError(
          "learner_not_ready",
          `node ${id} has not answered this leader lately (is it running and reachable at its peer URL? a leader just elected hears from it within a heartbeat): a voter that is down would only make majorities harder`,
        ),
      );
    }
    return this.propose({ type: "promote", nodeId: id });
  }

  async remove(id: NodeId): Promise<MembersView> {
    let raw = this.leaderNow();
    if (!raw.members().includes(id)) raw = await this.currentLeader();
    const status = raw.basicStatus();
    if (!raw.members().includes(id)) throw new KvError("not_found", `node ${id} is not a member`);
    if (raw.isVoter(id) && status.voters.length === 1) throw new KvError("bad_request", `node ${id} is the last voter`);
    if (raw.isVoter(id)) this.refuseUnlessQuorumRemains(id, status.voters);
    if (id === this.host.id) {
      // A leader does not remove itself (it would go on leading a configuration it is not in until
      // the change commits): it hands over, and the caller retries on the new leader (a 307).
      const { leaderId } = await this.host.transferLeadership();
      throw this.notLeaderAfterTransfer(leaderId);
    }
    return this.propose({ type: "remove", nodeId: id });
  }

  /**
   * Refuses to remove voter `id` when the voters left would not have a majority this leader heard
   * from lately (as etcd's strict reconfiguration check does): with one of three voters down,
   * removing another live one left two voters, one of them down, and nothing committed again until
   * it came back (found in a code review). `unhealthy_cluster` is not retried: it passes only when
   * the operator acts. A leader elected less than an election timeout ago cannot tell yet: it asks
   * for a retry, as accepting would let any leader change carry the removal through (found in the
   * review of this check).
   */
  private refuseUnlessQuorumRemains(id: NodeId, voters: readonly NodeId[]): void {
    const heardRecently = this.host.raw().votersHeardRecently();
    if (heardRecently === undefined) {
      throw new KvError("unavailable", "this leader was elected less than an election timeout ago and cannot yet tell which voters answer it; retry shortly", { retryAfterS: 1 });
    }
    const left = voters.filter((voter) => voter !== id);
    const heard = left.filter((voter) => heardRecently.includes(voter));
    const majority = Math.floor(left.length / 2) + 1;
    if (heard.length >= majority) return;
    const silent = left.filter((voter) => !heard.includes(voter));
    // Bringing back (or removing) enough of them to make a majority again will do, not all.
    const needed = majority - heard.length;
    const advice =
      silent.length === 1
        ? `bring back node ${silent[0]}, or remove it, first`
        : `bring back ${needed === 1 ? "one" : needed} of node ${silent.join(", node ")}, or remove silent ones, first`;
    throw new KvError(
      "unhealthy_cluster",
      `removing node ${id} would leave voters ${left.join(", ")}, of which this leader heard lately only from ${heard.join(", ")}: fewer than the ${majority} a majority needs, so nothing could commit; ${advice}`,
    );
  }

  /** The core, if this node takes itself for the leader (else the refusal a follower gives). */
  private leaderNow(): RawNode {
    this.host.refuseUnlessRunning();
    const raw = this.host.raw();
    if (raw.basicStatus().role !== "leader") throw this.host.notLeader();
    return raw;
  }

  /**
   * The core, once this node has confirmed it leads and its configuration is the cluster's: what a
   * final "not a member" or "already a member" is decided against. The configuration is the applied
   * one, so a leader deposed without knowing it (cut off in an older term) answered from one that
   * is not the cluster's: swarm seed 47's deposed leader answered "node 5 is not a member" after
   * another leader had added it, and the operator took that for the removal done. So first a
   * heartbeat round confirms the leadership and everything committed before is applied (as a
   * linearizable read; etcd decides its member changes through the log), and a change still in the
   * log unapplied (this leader's own, not yet committed) is refused `conf_change_pending`, retried by
   * the client and `kv member`, as a second change is. A change that goes ahead needs no such
   * round: the log decides it, and a deposed leader's proposal never commits.
   */
  private async currentLeader(): Promise<RawNode> {
    this.leaderNow();
    await this.host.confirmLeadership();
    const raw = this.leaderNow();
    if (raw.confChangePending()) throw confChangePending();
    return raw;
  }

  private notLeaderAfterTransfer(leaderId: NodeId): KvError {
    const leaderUrl = this.host.httpUrlOf(leaderId);
    if (leaderId === 0 || leaderUrl === undefined) {
      return new KvError("no_leader", "leadership was handed over to remove this node; retry on the new leader", { retryAfterS: 1 });
    }
    return new KvError("not_leader", `leadership was handed to node ${leaderId}, which will perform the removal`, { leaderId, leaderUrl });
  }

  /** Proposes one change (the core refuses a second while one is unapplied) and waits for it to apply here. */
  private propose(change: MembershipChange): Promise<MembersView> {
    this.host.refuseUnlessRunning();
    const raw = this.host.raw();
    const status = raw.basicStatus();
    if (status.role !== "leader") return Promise.reject(this.host.notLeader());
    if (this.pending !== undefined) return Promise.reject(confChangePending());
    let index: number;
    try {
      // Outside a turn no Ready is outstanding, so the core may take the proposal now.
      index = raw.proposeConfChange(encodeMembershipChange(change));
    } catch (error: unknown) {
      if (!(error instanceof ProposalRefusedError)) throw error;
      if (error.reason === "conf_change_pending") return Promise.reject(confChangePending());
      if (error.reason === "leader_transfer") return Promise.reject(new KvError("unavailable", "leadership is being handed over; retry shortly", { retryAfterS: 1 }));
      return Promise.reject(this.host.notLeader());
    }
    this.host.log?.("membership proposed", { change: change.type, nodeId: change.nodeId, index, ...(change.peerUrl === undefined ? {} : { peerUrl: change.peerUrl }) });
    this.host.scheduleTurn();
    return new Promise<MembersView>((resolve, reject) => {
      this.pending = { resolve, reject, deadlineMs: this.host.deadline(), index, term: status.term };
    });
  }

  /** A committed entry applied: if it took the index of the change we proposed, ours will never apply. */
  entryApplied(entry: Entry): void {
    const pending = this.pending;
    if (pending !== undefined && pending.index === entry.index && pending.term !== entry.term) {
      this.pending = undefined;
      pending.reject(proposalDropped("the membership change"));
    }
  }

  /** Applies a committed change (already in the recorded configuration) to the core and the peer map. */
  changeApplied(result: Extract<ApplyResult, { kind: "conf-change" }>, term: number): void {
    const { change, index } = result;
    const raw = this.host.raw();
    raw.applyConfChange({ type: change.type, nodeId: change.nodeId }, index);
    this.refreshAddresses();
    const status = raw.basicStatus();
    this.host.log?.("membership applied", { change: change.type, nodeId: change.nodeId, index, voters: status.voters, learners: status.learners });
    // A change before the one that added this process (a node that joined replays the log's
    // history up to its own addition): its id's past removals and additions are earlier processes',
    // not news (found in a black-box review: a joiner logged every past removal of its id as its
    // own, "may be stopped").
    const ownAddedIndex = this.host.storage.membership().addresses.find((address) => address.id === this.host.id)?.addedIndex;
    const history = ownAddedIndex !== undefined && index < ownAddedIndex;
    const ownPeerUrl = this.host.peers.get(this.host.id);
    if (history) {
      // Nothing of this process's own.
    } else if (change.type === "remove" && change.nodeId === this.host.id) {
      this.markRemoved(true);
      this.host.log?.("removed", { detail: `this node was removed from the cluster at index ${index}; it serves no more requests and may be stopped`, index });
    } else if (change.type === "add-learner" && change.nodeId === this.host.id && this.removedHere && change.peerUrl !== undefined && ownPeerUrl !== undefined && change.peerUrl !== ownPeerUrl) {
      // Its id added again for another process, at another address: not this one, which stays removed.
      this.host.log?.("removed", { detail: `node ${this.host.id} was added again at index ${index} at ${change.peerUrl}, another process than this one (${ownPeerUrl}): this one stays removed and may be stopped`, index });
    } else if (change.type === "add-learner" && change.nodeId === this.host.id && this.removedHere) {
      // Removed (its removal applied, or a peer said so) and added again at its own address: this
      // very process is a member again (a joiner's replay of its id's history is skipped above).
      this.markRemoved(false);
      this.host.log?.("member again", { detail: `this node was added again at index ${index}; it serves requests`, index });
    }
    const pending = this.pending;
    if (pending === undefined || index < pending.index) return;
    this.pending = undefined;
    if (index === pending.index && term === pending.term) pending.resolve(this.view());
    else pending.reject(proposalDropped("the membership change"));
  }

  /**
   * The leader promotes a learner whose log has caught up with its commit index of ~100 ms ago
   * (one change at a time). Of this very tick, a learner whose acks come a little after the
   * quorum's (a slower disk, a longer link) was never promoted under steady writes: always a few
   * entries behind (found in a code review: not after 5 s, 25 ms behind at 200 writes a second).
   */
  maybePromoteLearner(): void {
    const raw = this.host.raw();
    const status = raw.basicStatus();
    if (status.role !== "leader") this.recentCommits.length = 0;
    else {
      this.recentCommits.push(status.commit);
      if (this.recentCommits.length > Math.max(2, Math.round(promotionLagMs / this.host.tickMs))) this.recentCommits.shift();
    }
    if (status.role !== "leader" || this.pending !== undefined || this.host.stopped()) return;
    const caughtUpTo = this.recentCommits[0] ?? status.commit;
    for (const learner of status.learners) {
      const match = raw.matchIndexOf(learner);
      // Heard from lately too: a learner that caught up and then went down keeps its match, and
      // promoted then it would only make majorities harder (with one voter, impossible).
      if (match === undefined || match < caughtUpTo || !raw.heardRecently(learner)) continue;
      this.propose({ type: "promote", nodeId: learner }).then(
        () => this.host.log?.("learner promoted", { nodeId: learner }),
        (error: unknown) => this.host.log?.("learner promotion failed", { nodeId: learner, error: error instanceof Error ? error.message : String(error) }),
      );
      return;
    }
  }

  /** Rebuilds the address book from storage and flags, and the transport's peer map from it. */
  refreshAddresses(): void {
    const { storage, peers, peerDirectory: directory } = this.host;
    const membership = storage.membership();
    const memberIds = new Set([...membership.voters, ...membership.learners]);
    this.addresses.clear();
    for (const address of membership.addresses) this.addresses.set(address.id, address);
    // This node's own --cluster view of a peer wins (e.g. a proxy in between); never for ex-members.
    // Where it differs from what the membership records, that is said once per address: a member
    // removed and added again elsewhere under its id stays at its old address for every node
    // started with the old --cluster line (found in a black-box review), and nothing said so.
    for (const [id, peerUrl] of peers) {
      if (!memberIds.has(id) && membership.changedIndex !== 0) continue;
      // Nor for a member added after the cluster's start (`addedIndex` > 0): --cluster names the
      // founding members, and its entry for an id removed and added again since is the old
      // process's. Taken, it had this node call the old process, which took the new one's addition
      // for its own and was promoted in its place (found in a black-box review).
      const addedIndex = this.addresses.get(id)?.addedIndex;
      if (id !== this.host.id && addedIndex !== undefined && addedIndex > 0) continue;
      const recorded = this.addresses.get(id)?.peerUrl;
      if (recorded !== undefined && recorded !== peerUrl && id !== this.host.id && this.overridesSaid.get(id) !== recorded) {
        this.overridesSaid.set(id, recorded);
        this.host.log?.("peer address from --cluster", {
          nodeId: id,
          peerUrl,
          recordedPeerUrl: recorded,
          detail: `this node reaches node ${id} at ${peerUrl}, as its --cluster says, where the membership records ${recorded}: if node ${id} moved (removed and added again elsewhere), drop or update its --cluster entry and restart this node`,
        });
      }
      this.addresses.set(id, { ...this.addresses.get(id), id, peerUrl });
    }
    if (directory === undefined) return;
    for (const id of [...directory.keys()]) {
      if (memberIds.has(id) || peers.has(id)) this.departed.delete(id);
      else if (!this.departed.has(id)) this.departed.set(id, undefined);
    }
    for (const [id, address] of this.addresses) if (id !== this.host.id && directory.get(id) !== address.peerUrl) directory.set(id, address.peerUrl);
  }

  /** This node stopped leading: a change it proposed may or may not commit under the next leader. */
  leadershipLost(): void {
    this.pending?.reject(new KvError("timeout", "leadership was lost before the membership change committed; its outcome is unknown"));
    this.pending = undefined;
  }

  expire(nowMs: number, requestTimeoutMs: number): void {
    if (this.pending !== undefined && this.pending.deadlineMs <= nowMs) {
      this.pending.reject(timeoutError("the membership change", requestTimeoutMs));
      this.pending = undefined;
    }
    for (const [id, untilMs] of this.departed) {
      if (untilMs === undefined) {
        this.departed.set(id, nowMs + departedKeptMs);
      } else if (untilMs <= nowMs) {
        this.departed.delete(id);
        this.host.peerDirectory?.delete(id);
      }
    }
  }

  /** The node stops: a change already proposed may still commit (`timeout`). */
  failAll(error: KvError): void {
    this.pending?.reject(new KvError("timeout", `${error.message}; a membership change already proposed may still commit`));
    this.pending = undefined;
  }
}

/** How long an ex-member stays reachable after its removal applied here (see `NodeMembership.departed`). */
const departedKeptMs = 2_000;

function confChangePending(): KvError {
  return new KvError("conf_change_pending", "a membership change is not yet applied; retry once it is", { retryAfterS: 1 });
}

/** The share of the leader's committed entries a learner must hold before `promote` makes it a voter (etcd's 90%). */
const learnerReadyShare = 0.9;

/**
 * Whether two peer URLs reach one address: the same scheme, host and port (`http://Host:1/x` and
 * `http://host:1` do; a path or query does not make another peer: found in review; nor does an
 * IPv4 address written as IPv6, `[::ffff:127.0.0.1]`: found in a black-box review).
 */
export function sameUrl(a: string, b: string): boolean {
  if (a === "" || b === "") return false;
  try {
    // Not `origin`: it is "null" for schemes other than http(s) (the simulator's, the tests').
    const address = (url: URL) => `${url.protocol}//${ipv4Unmapped(url.host)}`.toLowerCase();
    return address(new URL(a)) === address(new URL(b));
  } catch {
    return a === b;
  }
}

/** `[::ffff:7f00:1]:5001` (how URL writes an IPv4-mapped IPv6 address) as `127.0.0.1:5001`; any other host as it is. */
function ipv4Unmapped(host: string): string {
  const mapped = /^\[::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})\](.*)$/i.exec(host);
  if (mapped === null) return host;
  const [high, low] = [Number.parseInt(mapped[1] as string, 16), Number.parseInt(mapped[2] as string, 16)];
  return `${high >> 8}.${high & 255}.${low >> 8}.${low & 255}${mapped[3] as string}`;
}

/**
 * What the peer transport reads of the configuration a node applied (src/transport/peer-call-guard.ts):
 * the index that added each member at its address, and who is a member as of which index. One
 * reading for the server (src/server/create-server.ts) and the simulator (src/sim/node-sim.ts).
 */
export function peerIdentityOf(storage: { membership(): Membership; appliedIndex(): number }): {
  memberSince(id: NodeId): number | undefined;
  readonly configuration: { isMember(id: NodeId): boolean; appliedIndex(): number };
} {
  return {
    memberSince: (id) => storage.membership().addresses.find((address) => address.id === id)?.addedIndex,
    configuration: {
      isMember: (id) => {
        const { voters, learners } = storage.membership();
        return voters.includes(id) || learners.includes(id);
      },
      appliedIndex: () => storage.appliedIndex(),
    },
  };
}
