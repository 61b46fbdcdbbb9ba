import { assert } from "../lib/assert.ts";
import type { Clock } from "../lib/clock.ts";
import { KvError } from "../lib/kv-error.ts";
import { isReservedKey } from "../kv/command.ts";
import type { ApplyResult } from "../kv/apply-plan.ts";
import { changeBytes, changesOf, type WatchChange, WatchHistory } from "../kv/watch-history.ts";
import type { Entry } from "../raft/types.ts";
import type { WatchFilter, WatchItem, WatchSubscription } from "./api.ts";

/** How watches behave on a node; every field has a default in `defaultWatch`. */
export interface WatchConfig {
  /** While a stream has nothing to send, a progress event at least this often (`--watch-progress-ms`). */
  readonly progressMs: number;
  /** Changes the history keeps at most (`--watch-history-entries`). */
  readonly historyEntriesMax: number;
  /** Changes older than this are dropped from the history (`--watch-history-ms`). */
  readonly historyMs: number;
  /** Bytes of keys and values the history keeps at most, whatever the two above say (`--watch-history-bytes`). */
  readonly historyBytesMax: number;
  /** Changes one stream may have waiting (arrived since it opened, not yet taken by its client); past it: `slow_watcher`. */
  readonly bufferEventsMax: number;
  /** Bytes (as `changeBytes` counts them) one stream may have waiting; past it: `slow_watcher`. */
  readonly bufferBytesMax: number;
  /** Streams open at once; past it a new watch is refused with `overloaded`. */
  readonly watchersMax: number;
}

export const defaultWatch: WatchConfig = {
  progressMs: 1_000,
  historyEntriesMax: 100_000,
  historyMs: 10 * 60_000,
  historyBytesMax: 8 * 1024 * 1024,
  bufferEventsMax: 10_000,
  bufferBytesMax: 16 * 1024 * 1024,
  watchersMax: 10_000,
};

/**
 * Changes handed to a stream's client per `next()` (one SSE write), at most about this many bytes of
 * keys and values (256 changes of 1 MiB values, from a history raised past its 8 MiB, made one
 * write of hundreds of MB of base64: noted in a review), and changes looked at per scan.
 */
const batchChangesMax = 256;
const batchBytesMax = 4 * 1024 * 1024;
const scanChangesMax = 16_384;

/** One open stream. `cursor`: every matching change up to it has been handed to the client. */
interface Watcher {
  readonly matches: (key: string) => boolean;
  /** The streams with the very same filter, this one among them, and where that group is filed. */
  readonly group: Set<Watcher>;
  readonly groups: Map<string, Set<Watcher>>;
  readonly groupName: string;
  cursor: number;
  /** Changes after this version arrived while the stream was open: they count against its buffer. */
  readonly liveFrom: number;
  pendingChanges: number;
  pendingBytes: number;
  /** While `pendingChanges` > 0: no change it counts is older than this version (a lower bound). */
  pendingFrom: number;
  /** When the stream last handed anything to its client (-Infinity: never, so the first `next` answers at once). */
  lastSentMs: number;
  /** The last version its client was told of (the id it would resume from). */
  lastSentVersion: number;
  /** Whether its opening progress event (at its start) was handed out. */
  opened: boolean;
  /** Set when the stream must end: handed out by the next `next()`, then the stream is over. */
  ending: WatchItem | undefined;
  done: boolean;
  wake: (() => void) | undefined;
}

/**
 * The watch machinery of one node: the change history (src/kv/watch-history.ts), fed by the node
 * loop right after each apply, and the open streams, which read it each at its own pace. The loop
 * never waits for a stream: it records a change, counts it against each matching stream's bounded
 * buffer, and wakes the stream; a stream whose client does not keep up overflows and ends with
 * `slow_watcher` (its client resumes from its last id, on this node or another, and loses nothing
 * while the history still holds that id).
 */
export class NodeWatch {
  private readonly history: WatchHistory;
  private readonly watchers = new Set<Watcher>();
  /**
   * Open streams by filter: a change is routed only to the groups that can match it (its exact key,
   * the prefixes of its key), never to every stream, so thousands of streams watching elsewhere cost
   * a change nothing. Invariant: every watcher in `watchers` is in exactly one group, and no group is empty.
   */
  private readonly byKey = new Map<string, Set<Watcher>>();
  private readonly byPrefix = new Map<string, Set<Watcher>>();
  /** How many of `byPrefix`'s prefixes have each length. */
  private readonly prefixLengths = new Map<number, number>();
  private readonly stopTicker: () => void;
  /** How often idle streams are checked for a due progress event. */
  private readonly tickerMs: number;
  /** Streams looked at to route changes, summed over every change recorded (see `routingVisits`). */
  private routingVisitsTotal = 0;
  private prefixLookupsTotal = 0;
  /** History changes looked at by streams' scans (see `historyScanned`). */
  private historyScannedTotal = 0;
  /** Changes scanned, by every stream together, since the count last started over at a turn of the event loop (see `next`). */
  private scannedThisTurn = 0;
  /** Resolved at the next turn of the event loop, once asked for (see `nextTurn`). */
  private turnWaiters: (() => void)[] = [];

  /**
   * `schedule` runs a function at a later turn of the event loop (the node's own scheduler: the
   * simulator's, or `setImmediate`).
   */
  constructor(
    private readonly cfg: WatchConfig,
    private readonly clock: Clock,
    startVersion: number,
    private readonly schedule: (turn: () => void) => void = setImmediate,
  ) {
    assert(Number.isSafeInteger(cfg.progressMs) && cfg.progressMs >= 1, `watch progressMs ${cfg.progressMs}`);
    assert(cfg.bufferEventsMax >= 1 && cfg.bufferBytesMax >= 1 && cfg.watchersMax >= 1, "watch buffer and watcher bounds must be positive");
    this.history = new WatchHistory({ entriesMax: cfg.historyEntriesMax, retentionMs: cfg.historyMs, bytesMax: cfg.historyBytesMax }, startVersion);
    this.tickerMs = Math.max(1, Math.min(100, Math.floor(cfg.progressMs / 10)));
    this.stopTicker = clock.every(this.tickerMs, () => this.wakeDueForProgress());
  }

  /** Streams open now. */
  count(): number {
    return this.watchers.size;
  }

  /**
   * Streams looked at so far to route changes to their watchers, summed over changes: the cost a
   * change pays per open stream. Tests read it to check that streams a change cannot match (another
   * prefix, another key) cost it nothing.
   */
  routingVisits(): number {
    return this.routingVisitsTotal;
  }

  /** Prefixes compared or looked up so far to find the prefix streams of changes, summed over changes (tests read it). */
  prefixLookups(): number {
    return this.prefixLookupsTotal;
  }

  /**
   * Changes of the history looked at by the streams so far, summed: what streams pay to find their
   * changes. Tests read it to check that a stream with nothing waiting does not rescan the history.
   */
  historyScanned(): number {
    return this.historyScannedTotal;
  }

  /** The last version recorded: the applied index. */
  lastVersion(): number {
    return this.history.lastVersion();
  }

  /** The loop applied `entries` with `results` (one each, same order): records the changes and wakes their streams. */
  applied(entries: readonly Entry[], results: readonly ApplyResult[]): void {
    assert(entries.length === results.length, "watch: one apply result per entry");
    const nowMs = this.clock.nowMs();
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as Entry;
      const result = results[i] as ApplyResult;
      if (result.kind === "skipped" || entry.index <= this.history.lastVersion()) continue;
      const changes = changesOf(entry, result);
      this.history.record(entry.index, changes, nowMs);
      for (const change of changes) this.notify(change);
    }
  }

  /** A snapshot was installed at `index`: the history restarts there; streams behind it end with `compacted`. */
  snapshotInstalled(index: number): void {
    if (index <= this.history.lastVersion()) return;
    this.history.reset(index);
    for (const watcher of this.watchers) {
      if (watcher.cursor < index) {
        this.end(watcher, {
          type: "error",
          error: "compacted",
          message: `this node installed a snapshot at ${index}: the changes before it are not known here; resume from your last id on another node, or re-read and watch again`,
          compactVersion: index + 1,
        });
      }
    }
  }

  /**
   * Opens a stream of the changes `filter` selects after version `afterVersion`. Throws `compacted`
   * (with `compactVersion`, the oldest version a watch may start from) when the history no longer
   * covers that start, `overloaded` past `watchersMax`.
   */
  subscribe(filter: WatchFilter, afterVersion: number): WatchSubscription {
    assert(Number.isSafeInteger(afterVersion) && afterVersion >= 0, `watch start ${afterVersion}`);
    this.history.trim(this.clock.nowMs());
    const compactedThrough = this.history.compactedThrough();
    if (afterVersion < compactedThrough) {
      throw new KvError(
        "compacted",
        `changes at or below version ${compactedThrough} are no longer kept on this node (start from version ${compactedThrough + 1} or later; re-read and watch again)`,
        { compactVersion: compactedThrough + 1 },
      );
    }
    if (this.watchers.size >= this.cfg.watchersMax) {
      throw new KvError("overloaded", `${this.watchers.size} watches are open on this node, the most it serves`, { retryAfterS: 1 });
    }
    const groups = "key" in filter ? this.byKey : this.byPrefix;
    const groupName = "key" in filter ? filter.key : filter.prefix;
    let group = groups.get(groupName);
    if (group === undefined) {
      groups.set(groupName, (group = new Set()));
      if (groups === this.byPrefix) this.prefixLengths.set(groupName.length, (this.prefixLengths.get(groupName.length) ?? 0) + 1);
    }
    const watcher: Watcher = {
      matches: matcherFor(filter),
      group,
      groups,
      groupName,
      cursor: afterVersion,
      liveFrom: this.history.lastVersion(),
      pendingChanges: 0,
      pendingBytes: 0,
      pendingFrom: 0,
      lastSentMs: Number.NEGATIVE_INFINITY,
      lastSentVersion: afterVersion,
      opened: false,
      ending: undefined,
      done: false,
      wake: undefined,
    };
    this.watchers.add(watcher);
    group.add(watcher);
    return {
      next: () => this.next(watcher),
      close: () => this.close(watcher),
    };
  }

  /** The node stops: every stream ends with `unavailable`; no more progress. */
  stop(): void {
    this.stopTicker();
    this.endAll("the node is shutting down; resume from your last id on another node");
  }

  /**
   * Every open stream ends with `unavailable` and `message`: the node was removed, or has known no
   * leader for a while, so it applies no more changes and its streams would send the same progress
   * for ever (or until a leader is heard again).
   */
  endAll(message: string): void {
    for (const watcher of this.watchers) this.end(watcher, { type: "error", error: "unavailable", message });
  }

  private async next(watcher: Watcher): Promise<WatchItem[] | undefined> {
    for (;;) {
      if (watcher.done) return undefined;
      if (!watcher.opened) {
        // First, where it starts, whatever came since: a client (or a checker) then knows that
        // every change after this version is owed to it, not only those after the first it gets.
        // Before an ending too: a stream that overflowed before its client read anything sent
        // slow_watcher alone, and a watch opened at "now" had no version to resume from (found in a
        // code review).
        watcher.opened = true;
        watcher.lastSentMs = this.clock.nowMs();
        return [{ type: "progress", version: watcher.cursor }];
      }
      const ending = watcher.ending;
      if (ending !== undefined) {
        this.close(watcher);
        return [ending];
      }
      const compacted = this.history.compactedThrough();
      if (watcher.cursor < compacted) {
        if (watcher.cursor >= watcher.liveFrom && (watcher.pendingChanges === 0 || Math.max(watcher.pendingFrom, watcher.cursor + 1) > compacted)) {
          // Past `liveFrom` every matching change after the cursor is counted (see below), and none
          // of those is at or below the compaction: what was dropped was others' changes. Before,
          // an idle stream watching one key was ended here whenever writes elsewhere turned the
          // history over between two of its progress events, and its resume was compacted too.
          watcher.cursor = compacted;
        } else {
          // The history dropped changes this stream had not yet taken: they are compacted here, as
          // when a snapshot overtakes a stream (a resume here is answered 410 compacted; found in a
          // black-box review: it ended with slow_watcher, which says a resume here loses nothing).
          this.end(watcher, {
            type: "error",
            error: "compacted",
            message: `this node's change history moved past this stream's position before its client took the changes (they are kept here from version ${compacted + 1}): the stream ends; resume from your last id (Last-Event-ID) on another node, whose history may still hold it, or re-read and watch again`,
            compactVersion: compacted + 1,
          });
          continue;
        }
      }
      if (watcher.cursor >= watcher.liveFrom && watcher.pendingChanges === 0) {
        // Invariant: past `liveFrom`, `pendingChanges` counts the matching changes after the cursor
        // not yet handed out (notify counts each as it is recorded). None waits: the history holds
        // nothing for this stream up to its last version, so an idle stream skips to it without a
        // scan (which would look at every change recorded since its last send).
        assert(watcher.pendingBytes === 0, "watch: no change waits, yet bytes are counted");
        // A stream may start past this node's last version (Last-Event-ID from a node ahead): never back.
        watcher.cursor = Math.max(watcher.cursor, this.history.lastVersion());
      }
      if (this.scannedThisTurn >= scanChangesMax) {
        // Streams resumed far back each scan up to the whole history to find their changes: all at
        // once, 50 of them held the loop 80 ms (found in a code review), and a few hundred would
        // cost the leader its leadership. One scan's worth per turn for all together; the rest waits.
        await this.nextTurn();
        continue;
      }
      const { changes, throughVersion, scanned } = this.history.scan(watcher.cursor, watcher.matches, batchChangesMax, scanChangesMax, batchBytesMax);
      this.historyScannedTotal += scanned;
      this.scannedThisTurn += scanned;
      watcher.cursor = Math.max(watcher.cursor, throughVersion);
      const nowMs = this.clock.nowMs();
      if (changes.length > 0) {
        for (const change of changes) {
          if (change.version > watcher.liveFrom) {
            watcher.pendingChanges--;
            watcher.pendingBytes -= changeBytes(change);
          }
        }
        watcher.lastSentMs = nowMs;
        watcher.lastSentVersion = (changes[changes.length - 1] as WatchChange).version;
        return changes.map((change) => ({ type: "change", change }));
      }
      if (watcher.cursor < this.history.lastVersion()) continue; // more to look at
      if (this.progressDue(watcher, nowMs)) {
        watcher.lastSentMs = nowMs;
        watcher.lastSentVersion = watcher.cursor;
        return [{ type: "progress", version: watcher.cursor }];
      }
      await new Promise<void>((resolve) => {
        watcher.wake = resolve;
      });
      watcher.wake = undefined;
    }
  }

  /** Resolves at the next turn of the event loop, when this turn's scanning starts over. */
  private nextTurn(): Promise<void> {
    if (this.turnWaiters.length === 0) {
      this.schedule(() => {
        this.scannedThisTurn = 0;
        const waiters = this.turnWaiters;
        this.turnWaiters = [];
        for (const resolve of waiters) resolve();
      });
    }
    return new Promise<void>((resolve) => this.turnWaiters.push(resolve));
  }

  /**
   * Due when the ticker may not come round again before `progressMs` has passed since the last
   * send, or when the history has dropped more than half of what it held after the last id the
   * client was told: under writes elsewhere the history can turn over in less than `progressMs`,
   * and a client resuming from an id it no longer holds is answered `compacted` on every node.
   */
  private progressDue(watcher: Watcher, nowMs: number): boolean {
    if (nowMs - watcher.lastSentMs >= this.cfg.progressMs - this.tickerMs) return true;
    const compacted = this.history.compactedThrough();
    const last = this.history.lastVersion();
    return watcher.lastSentVersion < last && watcher.lastSentVersion - compacted < (last - compacted) / 2;
  }

  private wakeDueForProgress(): void {
    const nowMs = this.clock.nowMs();
    for (const watcher of this.watchers) if (watcher.wake !== undefined && this.progressDue(watcher, nowMs)) watcher.wake();
  }

  /** A change was recorded: every stream that will send it counts it against its buffer, and wakes. */
  private notify(change: WatchChange): void {
    const key = change.key;
    const exact = this.byKey.get(key);
    if (exact !== undefined) for (const watcher of exact) this.notifyOne(watcher, change);
    // Keys in the state machine's own space reach no prefix stream (see matcherFor).
    if (this.byPrefix.size === 0 || isReservedKey(key)) return;
    if (this.byPrefix.size <= this.prefixLengths.size) {
      this.prefixLookupsTotal += this.byPrefix.size;
      for (const [prefix, group] of this.byPrefix) if (key.startsWith(prefix)) for (const watcher of group) this.notifyOne(watcher, change);
    } else {
      // More distinct prefixes than lengths of them: look up the key's own prefix of each length
      // some prefix has (it looked up every length of the key: a long key's slices, each hashed,
      // cost its length squared, 6 ms a change for a 10,000-character key: noted in a review).
      for (const length of this.prefixLengths.keys()) {
        if (length > key.length) continue;
        this.prefixLookupsTotal++;
        const group = this.byPrefix.get(key.slice(0, length));
        if (group !== undefined) for (const watcher of group) this.notifyOne(watcher, change);
      }
    }
  }

  private notifyOne(watcher: Watcher, change: WatchChange): void {
    this.routingVisitsTotal++;
    if (watcher.ending !== undefined || change.version <= watcher.cursor) return;
    assert(watcher.matches(change.key), "watch: a change routed to a stream whose filter does not match it");
    if (change.version > watcher.liveFrom) {
      if (watcher.pendingChanges === 0) watcher.pendingFrom = change.version;
      watcher.pendingChanges++;
      watcher.pendingBytes += changeBytes(change);
      if (watcher.pendingChanges > this.cfg.bufferEventsMax || watcher.pendingBytes > this.cfg.bufferBytesMax) {
        // Bytes as changeBytes counts them: a key at 3 a character (a 4,000-character key counts
        // 12,064), which the message says (found in a black-box review: it read as an undercount).
        this.overflow(watcher, `more than ${this.cfg.bufferEventsMax} changes or ${this.cfg.bufferBytesMax} bytes (keys counted at 3 bytes a character, values as they are, 64 a change) waited for this stream's client`);
        return;
      }
    }
    watcher.wake?.();
  }

  private overflow(watcher: Watcher, why: string): void {
    this.end(watcher, { type: "error", error: "slow_watcher", message: `${why}: the stream ends; resume from your last id (Last-Event-ID) and nothing is lost` });
  }

  private end(watcher: Watcher, item: WatchItem): void {
    if (watcher.done || watcher.ending !== undefined) return;
    watcher.ending = item;
    watcher.wake?.();
  }

  private close(watcher: Watcher): void {
    if (watcher.done) return;
    watcher.done = true;
    this.watchers.delete(watcher);
    watcher.group.delete(watcher);
    if (watcher.group.size === 0) {
      watcher.groups.delete(watcher.groupName);
      if (watcher.groups === this.byPrefix) {
        const left = (this.prefixLengths.get(watcher.groupName.length) ?? 0) - 1;
        if (left > 0) this.prefixLengths.set(watcher.groupName.length, left);
        else this.prefixLengths.delete(watcher.groupName.length);
      }
    }
    watcher.wake?.();
  }
}

/** The keys a filter selects; keys in the state machine's own space (sessions, leases) never. */
function matcherFor(filter: WatchFilter): (key: string) => boolean {
  if ("key" in filter) {
    const wanted = filter.key;
    return (key) => key === wanted;
  }
  const prefix = filter.prefix;
  return (key) => key.startsWith(prefix) && !isReservedKey(key);
}
