import { assert } from "../lib/assert.ts";
import type { RaftStorage } from "./storage.ts";
import { EntryType, type Entry, type SnapshotToInstall } from "./types.ts";

/**
 * The Raft log as the core sees it: what storage holds, followed by `unstable` entries not yet
 * persisted (etcd's raftLog + unstable). Invariant: applied <= applying <= committed <= lastIndex(),
 * and applying <= durable: an entry is handed to the application only once this node's own copy is
 * on disk (etcd's raft does the same with asynchronous storage writes). A follower may learn that
 * an entry is committed before its own fsync of it returns; applied then, the state machine could
 * be ahead of the log after a power loss, once the two are not one file.
 */
export class RaftLog {
  /** Index of unstable[0]; every entry at or past it is not yet known to be on disk. */
  private unstableOffset: number;
  private unstable: Entry[] = [];
  /** A snapshot received from the leader and not yet installed by the driver. */
  private unstableSnapshot: SnapshotToInstall | undefined;
  committed: number;
  /**
   * The highest index the application says it applied: at `advance`, or later for a Ready advanced
   * with its apply still under way (`confirmApplied`). A membership change counts from here.
   */
  applied: number;
  /** The highest index handed to the application in a Ready: the next Ready's entries follow it. */
  applying: number;
  /** This node's log is on disk up to here (the driver reports it: `durableTo`). */
  private durable: number;

  constructor(
    private readonly storage: RaftStorage,
    committed: number,
    applied: number,
  ) {
    this.unstableOffset = storage.lastIndex() + 1;
    assert(committed <= storage.lastIndex(), `committed ${committed} beyond last index ${storage.lastIndex()}`);
    // A compacted log implies its snapshot is committed and applied.
    const snapshotIndex = storage.snapshot().index;
    this.committed = Math.max(committed, snapshotIndex);
    this.applied = Math.max(Math.min(applied, this.committed), snapshotIndex);
    this.applying = this.applied;
    // What storage holds when the node starts is taken as on disk. A process crash may leave writes
    // only in the page cache: the storage must make what it reads back at open durable before the
    // core counts on it (SegmentLog.open fdatasyncs every segment it replays, src/storage/segment-log.ts).
    this.durable = storage.lastIndex();
  }

  firstIndex(): number {
    return this.unstableSnapshot !== undefined ? this.unstableSnapshot.metadata.index + 1 : this.storage.firstIndex();
  }

  lastIndex(): number {
    const last = this.unstable[this.unstable.length - 1];
    if (last !== undefined) return last.index;
    if (this.unstableSnapshot !== undefined) return this.unstableSnapshot.metadata.index;
    return this.storage.lastIndex();
  }

  lastTerm(): number {
    return this.term(this.lastIndex()) as number;
  }

  /** The term at `index`, or undefined when the index is beyond the log or compacted away. */
  term(index: number): number | undefined {
    if (index > this.lastIndex()) return undefined;
    if (index >= this.unstableOffset) return (this.unstable[index - this.unstableOffset] as Entry).term;
    if (index < this.firstIndex() - 1) return undefined;
    const snapshot = this.unstableSnapshot?.metadata;
    if (snapshot !== undefined) return index === snapshot.index ? snapshot.term : undefined;
    return this.storage.term(index);
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** §5.4.1: is a log ending at (lastIndex, lastTerm) at least as up to date as ours? */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourLastTerm = this.lastTerm();
    return lastTerm > ourLastTerm || (lastTerm === ourLastTerm && lastIndex >= this.lastIndex());
  }

  /**
   * Entries in [lo, hi), at most `maxBytes` of data but always at least one when lo < hi.
   * Entries before firstIndex() are compacted away: the caller checks first (a leader sends a snapshot).
   */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    assert(lo >= this.firstIndex() && hi <= this.lastIndex() + 1 && lo <= hi, `slice(${lo}, ${hi}) out of range`);
    const result: Entry[] = [];
    if (lo < this.unstableOffset) {
      const stored = this.storage.entries(lo, Math.min(hi, this.unstableOffset), maxBytes);
      for (const entry of stored) result.push(entry);
      if (hi <= this.unstableOffset || stored.length < Math.min(hi, this.unstableOffset) - lo) return result;
    }
    let bytes = 0;
    for (const entry of result) bytes += entry.data.byteLength;
    for (let index = Math.max(lo, this.unstableOffset); index < hi; index++) {
      const entry = this.unstable[index - this.unstableOffset] as Entry;
      bytes += entry.data.byteLength;
      if (result.length > 0 && bytes > maxBytes) break;
      result.push(entry);
    }
    return result;
  }

  /** Appends entries, truncating any conflicting suffix first. Never touches committed entries. */
  append(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    assert(first.index > this.committed, `append at ${first.index} would overwrite committed ${this.committed}`);
    assert(first.index <= this.lastIndex() + 1, `append at ${first.index} leaves a gap after ${this.lastIndex()}`);
    // A suffix replaced is no longer what is on disk there.
    this.durable = Math.min(this.durable, first.index - 1);
    if (first.index === this.unstableOffset + this.unstable.length) {
      // The common case: extend the unstable tail.
    } else if (first.index <= this.unstableOffset) {
      // Replaces part of the stable log: storage drops its suffix from this index when it saves.
      this.unstableOffset = first.index;
      this.unstable = [];
    } else {
      this.unstable.length = first.index - this.unstableOffset;
    }
    for (const entry of entries) this.unstable.push(entry);
  }

  /**
   * Follower side of AppendEntries (§5.3): if the log holds (prevIndex, prevTerm), append the
   * entries that are new, truncating from the first conflict, and advance commit. Returns the
   * index of the last new entry, or undefined when the consistency check fails.
   */
  maybeAppend(prevIndex: number, prevTerm: number, commit: number, entries: readonly Entry[]): number | undefined {
    if (!this.matchTerm(prevIndex, prevTerm)) return undefined;
    const lastNewIndex = prevIndex + entries.length;
    let conflictAt = -1;
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as Entry;
      if (!this.matchTerm(entry.index, entry.term)) {
        conflictAt = i;
        break;
      }
    }
    if (conflictAt >= 0) {
      const conflictIndex = (entries[conflictAt] as Entry).index;
      assert(conflictIndex > this.committed, `entry ${conflictIndex} conflicts with committed ${this.committed}`);
      this.append(entries.slice(conflictAt));
    }
    this.commitTo(Math.min(commit, lastNewIndex));
    return lastNewIndex;
  }

  /**
   * The largest index <= `index` whose term is <= `term` (etcd's findConflictByTerm): where a
   * leader should probe next when a follower rejects, skipping whole terms at once.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    let at = Math.min(index, this.lastIndex());
    for (;;) {
      const termAt = this.term(at);
      if (termAt === undefined) return { index: at, term: 0 };
      if (termAt <= term) return { index: at, term: termAt };
      at--;
    }
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    assert(index <= this.lastIndex(), `commit ${index} beyond last index ${this.lastIndex()}`);
    this.committed = index;
  }

  /** Leader side (§5.4.2): commit `index` only if it holds an entry of the leader's current term. */
  maybeCommit(index: number, term: number): boolean {
    if (index > this.committed && this.term(index) === term) {
      this.commitTo(index);
      return true;
    }
    return false;
  }

  /** Entries up to `index` were handed to the application (the Ready that carried them advanced). */
  handedTo(index: number): void {
    assert(index <= this.committed && index >= this.applying, `handed ${index} outside [${this.applying}, ${this.committed}]`);
    this.applying = index;
  }

  /** The application applied everything up to `index`, handed before; an older confirmation changes nothing. */
  appliedTo(index: number): void {
    assert(index <= this.applying, `applied ${index} past ${this.applying}, the last index handed to apply`);
    this.applied = Math.max(this.applied, index);
  }

  unstableEntries(): readonly Entry[] {
    return this.unstable;
  }

  /** Committed entries not yet handed to the application, at most `maxBytes` (at least one). */
  nextCommittedEntries(maxBytes: number): Entry[] {
    if (!this.hasNextCommittedEntries()) return [];
    return this.slice(this.applying + 1, this.applicableTo() + 1, maxBytes);
  }

  /** Entries up to here may go to apply: committed, and on this node's disk. */
  private applicableTo(): number {
    return Math.min(this.committed, this.durable);
  }

  /** The driver made the log durable up to (`index`, `term`); a report the log no longer matches changes nothing. */
  durableTo(index: number, term: number): void {
    if (index > this.durable && this.matchTerm(index, term)) this.durable = index;
  }

  /**
   * Is a membership change committed but not yet applied? Such a server may not know the
   * configuration it belongs to yet, so it must not campaign (etcd's guard in `hup`). Reads the
   * committed, unapplied entries a page at a time; usually there are none or a few.
   */
  hasUnappliedConfChange(): boolean {
    return this.hasConfChangeThrough(this.committed);
  }

  /** Whether a membership change lies past the applied index, up to `last` (committed or not). */
  hasConfChangeThrough(last: number): boolean {
    const pageBytesMax = 1 << 20;
    let lo = Math.max(this.applied + 1, this.firstIndex());
    while (lo <= last) {
      const page = this.slice(lo, last + 1, pageBytesMax);
      if (page.some((entry) => entry.type === EntryType.ConfChange)) return true;
      lo += page.length;
    }
    return false;
  }

  /** None while a snapshot waits to be installed: it replaces everything up to its index first. */
  hasNextCommittedEntries(): boolean {
    return this.unstableSnapshot === undefined && this.applicableTo() > this.applying;
  }

  /**
   * Follower side of InstallSnapshot: the log restarts empty after the snapshot's index, which is
   * committed. Entries after it arrive later. The driver installs the image before anything else.
   */
  restore(snapshot: SnapshotToInstall): void {
    const index = snapshot.metadata.index;
    assert(index > this.committed, `snapshot at ${index} is not past commit ${this.committed}`);
    this.unstableSnapshot = snapshot;
    this.unstable = [];
    this.unstableOffset = index + 1;
    this.committed = index;
    // Nothing of the log before it stays; the image is durable once installed (snapshotInstalled).
    this.durable = Math.min(this.durable, index);
  }

  pendingSnapshot(): SnapshotToInstall | undefined {
    return this.unstableSnapshot;
  }

  /** The driver installed the snapshot at `index`: the state machine now holds everything up to it. */
  snapshotInstalled(index: number): void {
    if (this.unstableSnapshot?.metadata.index !== index) return;
    this.unstableSnapshot = undefined;
    this.applied = Math.max(this.applied, index);
    this.applying = Math.max(this.applying, index);
    this.durable = Math.max(this.durable, index);
  }

  /** The driver persisted entries up to (index, term): they leave the unstable tail. */
  stableTo(index: number, term: number): void {
    if (index < this.unstableOffset) return;
    const entry = this.unstable[index - this.unstableOffset];
    if (entry === undefined || entry.term !== term) return; // replaced since that Ready: still unstable
    this.unstable = this.unstable.slice(index + 1 - this.unstableOffset);
    this.unstableOffset = index + 1;
  }
}
