import type { NodeId } from "../raft/types.ts";
import type { MembershipChange } from "./command.ts";

/** Where a member is reached: recorded from `--cluster` at bootstrap, a join answer, or the log. */
export interface MemberAddress {
  readonly id: NodeId;
  /** Base URL of the member's peer (Raft) port. */
  readonly peerUrl: string;
  /** Its advertised client URL, when known. */
  readonly httpUrl?: string;
  /**
   * The index of the entry that added it at this address (0: a founding member, named by
   * `--cluster` before any change). Absent when unknown: recorded by a release before this field,
   * or learned from one. It tells the processes of one id apart (src/transport/peer-identity.ts):
   * one added again later has a larger one.
   */
  readonly addedIndex?: number;
}

/**
 * Whether `value`, read from outside (a JSON answer, a backup's header), is an `addedIndex`: a whole
 * number from 0 to `atMost` (an image's or a backup's index: nothing in it was added later).
 */
export function isAddedIndex(value: unknown, atMost = Number.MAX_SAFE_INTEGER): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 && value <= atMost;
}

/**
 * The configuration as of the applied index (thesis §4.1: a server uses the latest configuration it
 * applied), kept by the state machine in the same transaction as the applied index.
 */
export interface Membership {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
  /** Addresses by id, sorted; a member may lack one (only its own `--cluster` flag knows it). */
  readonly addresses: readonly MemberAddress[];
  /** Index of the last applied change (or join, or snapshot that changed it); 0: still the bootstrap one. */
  readonly changedIndex: number;
}

/**
 * The recorded configuration after one applied membership change, shared by the sqlite storage and
 * its twin. It mirrors the core's `Raft.applyConfChange` exactly (an add of a voter changes no
 * role; a promote makes a voter; a remove drops the member and its addresses), so that the
 * configuration a restarted core reads from storage is the one it had.
 */
export function membershipAfter(membership: Membership, change: MembershipChange, index: number): Membership {
  const voters = new Set(membership.voters);
  const learners = new Set(membership.learners);
  const addresses = new Map(membership.addresses.map((address) => [address.id, address]));
  const id = change.nodeId;
  switch (change.type) {
    case "add-learner": {
      const wasMember = voters.has(id) || learners.has(id);
      if (!voters.has(id)) learners.add(id);
      if (change.peerUrl !== undefined) {
        // An add of a member that was not removed first is not a new process of its id: it keeps its index.
        const kept = wasMember ? addresses.get(id)?.addedIndex : index;
        addresses.set(id, { id, peerUrl: change.peerUrl, ...(change.httpUrl === undefined ? {} : { httpUrl: change.httpUrl }), ...(kept === undefined ? {} : { addedIndex: kept }) });
      }
      break;
    }
    case "promote":
      learners.delete(id);
      voters.add(id);
      break;
    case "remove":
      voters.delete(id);
      learners.delete(id);
      addresses.delete(id);
      break;
    default:
      change.type satisfies never;
  }
  return {
    voters: sortedIds(voters),
    learners: sortedIds(learners),
    addresses: [...addresses.values()].sort((a, b) => a.id - b.id),
    changedIndex: index,
  };
}

/** One member as a configuration lists it (`GET /members`, `POST /members`'s answer); JSON gives null for unknowns. */
export interface ListedMember {
  readonly id: NodeId;
  readonly peerUrl: string;
  readonly httpUrl?: string | null | undefined;
  readonly role?: string | null | undefined;
  readonly addedIndex?: number | null | undefined;
}

/**
 * The configuration a joining server records (`KvStorage.bootstrapJoined`) from the members list
 * the leader answered its addition with: voters and learners by role, the addresses of those with
 * a peer URL. Shared by `kv serve --join` (src/server/join.ts) and the simulator's joins.
 */
export function configurationOfMembers(members: readonly ListedMember[]): Omit<Membership, "changedIndex"> {
  return {
    voters: sortedIds(members.filter((member) => member.role === "voter").map((member) => member.id)),
    learners: sortedIds(members.filter((member) => member.role === "learner").map((member) => member.id)),
    addresses: members
      .filter((member) => member.peerUrl !== "")
      .map((member) => ({
        id: member.id,
        peerUrl: member.peerUrl,
        ...(member.httpUrl === null || member.httpUrl === undefined ? {} : { httpUrl: member.httpUrl }),
        ...(isAddedIndex(member.addedIndex) ? { addedIndex: member.addedIndex } : {}),
      }))
      .sort((a, b) => a.id - b.id),
  };
}

/** True when both name the same voters and the same learners. */
export function sameMembers(a: Pick<Membership, "voters" | "learners">, b: Pick<Membership, "voters" | "learners">): boolean {
  const same = (x: readonly NodeId[], y: readonly NodeId[]) => x.length === y.length && sortedIds(x).every((id, i) => id === sortedIds(y)[i]);
  return same(a.voters, b.voters) && same(a.learners, b.learners);
}

/** `addresses` with those in `extra` added for ids that have none. */
export function withMissingAddresses(addresses: readonly MemberAddress[], extra: readonly MemberAddress[]): MemberAddress[] {
  const byId = new Map(addresses.map((address) => [address.id, address]));
  for (const address of extra) if (!byId.has(address.id)) byId.set(address.id, address);
  return [...byId.values()].sort((a, b) => a.id - b.id);
}

function sortedIds(ids: Iterable<NodeId>): NodeId[] {
  return [...ids].sort((a, b) => a - b);
}

/**
 * Addresses after installing a snapshot: the image's win, an address only this node knew (its own
 * `--cluster` flag) is kept, and only members of the snapshot's configuration remain.
 */
export function addressesAfterInstall(
  fromImage: readonly MemberAddress[],
  recorded: readonly MemberAddress[],
  voters: readonly NodeId[],
  learners: readonly NodeId[],
): MemberAddress[] {
  return withMissingAddresses(fromImage, recorded).filter((address) => voters.includes(address.id) || learners.includes(address.id));
}
