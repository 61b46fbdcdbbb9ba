/**
 * Locks and elections on leases, create-only puts and watch (README.md "Locks and elections").
 *
 * Each contender for `name` grants itself a lease and creates the key `name/<leaseId>` on it with
 * `PUT ?ifVersion=0&lease=<leaseId>`. Contenders are ordered by the version at which their key was
 * created: the first holds the lock (or office), and that version is its fence. A new key is
 * always created at a version above every key that exists, so the first key's version strictly
 * increases from one holder to the next. A waiter watches only the key just ahead of it (no polling,
 * no thundering herd: one holder leaving wakes one waiter) and looks again when that key is deleted
 * (released, revoked, or its lease ran out).
 *
 * Why the watch cannot miss the delete: the predecessor was listed (a linearizable read) with the
 * version it was created at, and it is written only once, so its delete comes at a later version;
 * the watch starts right after its creation (`fromVersion`), not "now". Should that version have left
 * every node's history (410 `compacted`), the waiter lists again: a key still present at that later
 * read was deleted, if at all, after the `compactVersion` the node named, so the watch starts there
 * (without one, from now, looking once more when the stream runs: `untilDeleted`).
 */
import { KvClientError, UnknownOutcomeError } from "./errors.ts";
import type { LeaseKeeper, LeasesApi } from "./leases.ts";
import type { KvEntry, ValueInput } from "./values.ts";
import { holdingRoom, type WatchEvent, type WatchOptions, type WatchSelector } from "./watch.ts";

/** Options of `lock` and `elect`. */
export interface LockOptions {
  /** The TTL of the contender's lease (default 10000 ms): how long a holder that stops (crash, pause) keeps others waiting. */
  readonly ttlMs?: number;
  /** Stops waiting: the call rejects with the signal's reason, and its key and lease are removed. */
  readonly signal?: AbortSignal;
  /**
   * False: do not wait (etcd's TryLock). With another contender ahead in the queue (the holder, or
   * a waiter before this one) the call is refused `locked` at once, its key and lease removed.
   */
  readonly wait?: boolean;
}

/** A held lock (or office). */
export interface LockHandle {
  /** The holder's key, `name/<leaseId>`. */
  readonly key: string;
  /**
   * The fencing token: the version at which `key` was created. It strictly increases from one holder
   * to the next, so a resource that remembers the highest fence it accepted can refuse a stale holder.
   */
  readonly fence: number;
  readonly leaseId: number;
  /** The lease's TTL as granted: the one asked for, or the cluster's minimum when that was more. */
  readonly ttlMs: number;
  /**
   * Aborts when the lock is, or may be, lost: the lease expired or was revoked (`lease_not_found`),
   * no keepalive was answered within one TTL (`lease_expired`), or another client deleted or wrote
   * the holder's key (`lock_key_changed`: its lease is then revoked); its reason is a `KvClientError`.
   * Another contender may then hold the lock: stop touching the resource (or rely on the fence).
   */
  readonly lost: AbortSignal;
  /**
   * Until when, by `performance.now()`, the lock is known held: the lease's `aliveUntilMs` (see
   * `LeaseKeeper`). Until then no other contender can take it, unless this one releases it; after
   * it, only the fence protects the resource.
   */
  aliveUntilMs(): number;
  /**
   * Deletes the key and revokes the lease, so the next waiter proceeds. Resolves true once
   * released (or the lock was already lost with its lease); false when the cluster did not answer
   * (or refused both the revoke and the delete): the lock may then stay held until its lease
   * expires, within one TTL; call it again to retry. Never rejects.
   */
  release(): Promise<boolean>;
}

/** An office held: as `LockHandle`, with `resign` for `release`. */
export interface Leadership extends Omit<LockHandle, "release"> {
  /** The value this leader campaigned with. */
  readonly value: ValueInput;
  /** Leaves office (deletes the key, revokes the lease): the next candidate is elected. As `release`, true once done. */
  resign(): Promise<boolean>;
}

/** What lock and election need of the client. */
export interface LockDeps {
  readonly leases: LeasesApi;
  put(key: string, value: ValueInput, options: { ifVersion: number; lease: number }): Promise<{ readonly version: number }>;
  delete(key: string): Promise<unknown>;
  /** A linearizable read of `key`: null when absent. */
  get(key: string): Promise<{ readonly version: number } | null>;
  list(prefix: string): AsyncIterableIterator<{ readonly items: readonly KvEntry[] }>;
  watch(selector: WatchSelector, options: WatchOptions): AsyncIterableIterator<WatchEvent>;
  /**
   * Takes room for one watch stream, which the lock's own watches then use (they take none of their
   * own); returns what gives it back. Throws `too_many_streams` when this process has none left.
   */
  reserveWatchRoom(): () => void;
  /**
   * The client's budget for one call, retries included (`timeoutMs`): a release's revoke and what
   * follows it share one, as `kv lock --timeout-ms` says. Default: no bound past each call's own.
   */
  readonly timeoutMs?: number;
}

const LOCK_TTL_MS_DEFAULT = 10_000;
/** How long an aborted acquire waits for its key and lease to be removed before it rejects. */
const ABORT_RELEASE_WAIT_MS = 1_000;
/** Times one call joins the queue again after losing its lease while waiting, before it gives up. */
const REJOINS_MAX = 100;
/** Keys of one queue listed at most: far above any real number of contenders, and a bound on memory. */
const CONTENDERS_MAX = 100_000;

/** Takes the lock `name`: resolves once held. See the module comment for how. */
export async function acquire(deps: LockDeps, name: string, value: ValueInput, options: LockOptions = {}): Promise<LockHandle> {
  const prefix = queuePrefix(name);
  const ttlMs = options.ttlMs ?? LOCK_TTL_MS_DEFAULT;
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1) throw new KvClientError("bad_request", 0, `ttlMs must be a whole number of milliseconds, got ${ttlMs}`);
  if (options.wait !== undefined && typeof options.wait !== "boolean") throw new KvClientError("bad_request", 0, `wait must be true or false, got ${JSON.stringify(options.wait)}`);
  // Waiting and holding each keep a watch open: refused here, before a key or lease is made, rather
  // than holding a lock whose keepalives wait behind the streams (see reserveWatchRoom). The room is
  // held until the acquire fails, or the lock held is released or lost.
  const releaseRoom = deps.reserveWatchRoom();
  try {
    return await acquireWithRoom(deps, prefix, ttlMs, value, options, releaseRoom);
  } catch (error) {
    releaseRoom();
    throw error;
  }
}

async function acquireWithRoom(deps: LockDeps, prefix: string, ttlMs: number, value: ValueInput, options: LockOptions, releaseRoom: () => void): Promise<LockHandle> {
  const signal = options.signal;
  for (let rejoins = 0; ; rejoins++) {
    signal?.throwIfAborted();
    // The lease's countdown starts when the leader applies the grant: after this, before the answer.
    const grantSentMs = performance.now();
    const granting = deps.leases.grant(ttlMs);
    // An abort while the grant is on its way rejects at once (found in a black-box review: with every
    // node paused, an abort after 500 ms rejected after the grant's 5 s); a lease granted after that
    // is revoked when it comes, or runs out by itself, holding no key.
    const lease = await untilAborted(granting, signal, (granted) => void deps.leases.revoke(granted.id).catch(() => undefined));
    const keeper = deps.leases.keep(lease.id, { ttlMs: lease.ttlMs, sentAtMs: grantSentMs });
    const key = `${prefix}${lease.id}`;
    /**
     * Gives the lock (or the place in the queue) back, saying whether it is. Revoking the lease
     * deletes its key at the same version: one write. A lease already gone took its key with it; a
     * revoke refused otherwise falls back to deleting the key; one unanswered (the cluster
     * unreachable) is false at once, as a delete would meet the same outage: the lock then stays
     * held until its lease expires, and the caller may say so or try again (found in a black-box
     * review: `kv lock` interrupted in an outage waited out two timeouts and exited 0, the lock
     * still held). False, not a rejection: a release in a `finally` does not hide the error before it.
     */
    const release = async (): Promise<boolean> => {
      keeper.stop();
      // One budget for the revoke and what follows it: the look after a revoke of unknown outcome
      // waited out a second whole timeout (found in a black-box review: kv lock, interrupted with no
      // node answering, took twice its --timeout-ms to exit).
      const deadlineMs = performance.now() + (deps.timeoutMs ?? Number.POSITIVE_INFINITY);
      // The key, once put, may be off the lease: another client wrote it over (a put detaches it),
      // before or after this holder's watch said so. The revoke or the expiry then left it, and it
      // would stand in the queue ahead of every later contender for ever: deleted too (found in a
      // code review: a release that came before the holder's watch saw the write left it). Read
      // after the lease is gone: still there, it is off the lease (a revoke's count of keys deleted
      // cannot tell, when the holder put keys of its own on the lease: found in a second review).
      const deleteKeyIfLeft = (): boolean | Promise<boolean> => {
        if (!putSent) return true;
        const left = deps.get(key).then(
          (entry) => (entry === null ? true : deps.delete(key).then(() => true, () => false)),
          () => false,
        );
        return withinMs(left, deadlineMs - performance.now(), false);
      };
      try {
        await deps.leases.revoke(lease.id);
        return await deleteKeyIfLeft();
      } catch (error) {
        if (error instanceof KvClientError && error.code === "lease_not_found") return deleteKeyIfLeft();
        // A revoke of unknown outcome (an attempt lost, then lease_not_found): gone either way if
        // the lease is gone now (found in review: a lock whose lease had run out answered "not
        // released", and kv lock exited 3 saying no node answered).
        // No budget left: nothing more is sent (a call abandoned here would still hold the process).
        if (!(deadlineMs - performance.now() > 0)) return false;
        if (error instanceof UnknownOutcomeError) {
          const lookup = deps.leases.get(lease.id).then(
            () => false,
            (answer: unknown) => answer instanceof KvClientError && answer.code === "lease_not_found" && deleteKeyIfLeft(),
          );
          return withinMs(lookup, deadlineMs - performance.now(), false);
        }
        if (!(error instanceof KvClientError) || error.status < 400 || error.status >= 500) return false;
        const deleted = deps.delete(key).then(
          () => true,
          () => false,
        );
        return withinMs(deleted, deadlineMs - performance.now(), false);
      }
    };
    let fence: number;
    let putSent = false;
    try {
      // As the grant: an abort while the key is being created rejects at once (the catch below removes both).
      putSent = true;
      fence = (await untilAborted(deps.put(key, value, { ifVersion: 0, lease: lease.id }), signal, () => undefined)).version;
      // Held only if the lease is still known alive: a lock lost on the way in is no lock. Known by the
      // time left, not only by `lost`, whose timer may not have fired yet (an event loop held past the
      // lease's time: found in review).
      if ((await waitForTurn(deps, prefix, key, fence, keeper, signal, options.wait !== false)) && !keeper.lost.aborted && performance.now() < keeper.aliveUntilMs()) {
        // The first release that succeeded (or is under way) answers every later call; one that
        // failed is tried again by the next (found in review: a cached failure never retried).
        let released: Promise<boolean> | undefined;
        const releaseOnce = () =>
          (released ??= release()
            .then((done) => {
              if (!done) released = undefined;
              return done;
            }));
        // Held until released or lost; meanwhile the holder watches its own key. Another client that
        // deletes it, or writes it (a put detaches it from the lease and moves it to the queue's
        // end), lets the next waiter in while the lease lives on (found in a black-box review: `kv
        // del` of the holder's key, and two `kv lock` holders ran at once, neither told).
        const held = new AbortController();
        const lost = new AbortController();
        const onLeaseLost = () => {
          lost.abort(keeper.lost.reason);
          held.abort();
        };
        if (keeper.lost.aborted) onLeaseLost();
        else keeper.lost.addEventListener("abort", onLeaseLost, { once: true });
        void untilKeyChanged(deps, prefix, key, fence, held.signal).then((change) => {
          if (change === undefined || held.signal.aborted) return;
          lost.abort(
            change === "expired"
              ? new KvClientError("lease_expired", 0, `the holder's lease ran out, and its key ${key} with it: another contender may hold the lock`)
              : new KvClientError("lock_key_changed", 0, `the holder's key ${key} was ${change} by another client: another contender may hold the lock`),
          );
          held.abort();
          // Its lease holds no place any more: given back at once, so nothing keeps it alive for
          // nothing (a release after this, as kv lock makes before it exits, answers when done).
          void releaseOnce();
        }).finally(releaseRoom);
        return {
          key,
          fence,
          leaseId: lease.id,
          ttlMs: lease.ttlMs,
          lost: lost.signal,
          // Not past now once lost or released (found in review: after a release it still named a
          // time up to a TTL ahead, while another contender held the lock).
          aliveUntilMs: () => (held.signal.aborted ? Math.min(keeper.aliveUntilMs(), performance.now()) : keeper.aliveUntilMs()),
          release: () => {
            held.abort();
            return releaseOnce();
          },
        };
      }
    } catch (error) {
      // An abort waits for the key and lease to be removed for a second at most: in an outage the
      // revoke would wait out its own timeout, and a lease left behind runs out by itself.
      if (signal?.aborted === true) {
        await withinMs(release(), ABORT_RELEASE_WAIT_MS, false);
        throw signal.reason;
      }
      await release();
      // Our lease ran out while we waited or wrote (a paused process, a long outage): our place in the
      // queue is gone with it, so join again at the end with a new lease.
      const leaseGone = keeper.lost.aborted || (error instanceof KvClientError && error.code === "lease_not_found");
      if (leaseGone && rejoins < REJOINS_MAX) continue;
      throw error;
    }
    // Our key vanished from the queue (its lease ran out), or another client wrote it over (it is off
    // our lease, and at the front it would have held the lock with a fence below its predecessor's:
    // found in a black-box review): join again, deleting what is left of it.
    await release();
    await deps.delete(key).catch(() => undefined);
    if (rejoins >= REJOINS_MAX) throw new KvClientError("lease_expired", 0, `lost its place in '${prefix}' ${REJOINS_MAX + 1} times while waiting: is the TTL (${ttlMs} ms) shorter than a round trip?`);
  }
}

/** What `promise` settles to, or `otherwise` once `ms` have passed (the call goes on, unheard). */
function withinMs<T>(promise: Promise<T>, ms: number, otherwise: T): Promise<T> {
  if (ms === Number.POSITIVE_INFINITY) return promise;
  if (!(ms > 0)) return Promise.resolve(otherwise);
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([promise, new Promise<T>((resolve) => (timer = setTimeout(() => resolve(otherwise), ms)))]).finally(() => clearTimeout(timer));
}

/**
 * Waits until `key`, as created at `fence`, is the first of the queue under `prefix`: true then;
 * false when it is no longer in the queue as created (gone, or written over by another client).
 * Throws when `signal` or the keeper's `lost` aborts.
 */
async function waitForTurn(deps: LockDeps, prefix: string, key: string, fence: number, keeper: LeaseKeeper, signal: AbortSignal | undefined, wait: boolean): Promise<boolean> {
  const both = signal === undefined ? keeper.lost : AbortSignal.any([signal, keeper.lost]);
  for (;;) {
    both.throwIfAborted();
    const queue = await listQueue(deps, prefix);
    // An abort while the listing was on its way is an abort: the caller gave up before its turn came
    // (found in review: `kv lock -- CMD` interrupted then ran CMD holding the lock).
    both.throwIfAborted();
    const at = queue.findIndex((entry) => entry.key === key);
    if (at < 0 || (queue[at] as KvEntry).version !== fence) return false;
    if (at === 0) return true;
    // A write over the key ahead moves it behind us (a new version): looked at again as a delete is,
    // and a look after a 410 asks whether it is still there as listed.
    const ahead = queue[at - 1] as KvEntry;
    // Not waiting: refused, and the caller's catch gives the key and lease back.
    if (!wait) throw new KvClientError("locked", 0, `'${prefix.slice(0, -1)}' is held by another contender (${(queue[0] as KvEntry).key}), or waited for before this one: not waiting`);
    await untilDeleted(deps, prefix, ahead, both, { anyChange: true, present: () => stillAsListed(deps, prefix, ahead) });
    both.throwIfAborted();
  }
}

/** The pause before watching again after a second 410 in a row. */
const COMPACTED_RETRY_MS_MIN = 50;
/** The longest such pause: the pauses double up to it. */
const COMPACTED_RETRY_MS_MAX = 2_000;

/**
 * Watches `entry` (a key of the queue under `prefix`, listed with the version it was created at)
 * until it is deleted (or, with `anyChange`, written), or may have been: then returns the event
 * that ended it, if any, and the caller lists the queue again (also when the stream simply ended).
 * `present` says whether the key is still there as listed (asked after a 410, and once a watch
 * from now shows it runs). The watch starts right after the key's creation, so it cannot miss
 * the delete. On 410 `compacted` it does what a new watcher would: it lists again (a key still there
 * is deleted, if at all, after this look) and watches from the `compactVersion` the node named; with
 * no usable one (none, or not past the start already tried) from now, looking again once the
 * stream's first progress event shows it runs. A node that keeps answering 410 is asked again after
 * pauses doubling from `COMPACTED_RETRY_MS_MIN` to `COMPACTED_RETRY_MS_MAX`, never in a tight loop.
 * Returns, too, once `signal` aborts (the caller tells why); throws what the watch throws otherwise.
 */
async function untilDeleted(
  deps: LockDeps,
  prefix: string,
  entry: Pick<KvEntry, "key" | "version">,
  signal: AbortSignal | undefined,
  how: { readonly anyChange?: boolean; readonly present: () => Promise<boolean> },
): Promise<WatchEvent | undefined> {
  const present = how.present;
  let fromVersion: number | undefined = entry.version + 1; // undefined: from now
  let compactedInARow = 0; // 410s with no event from a stream between them
  const aborted = () => signal?.aborted === true;
  for (;;) {
    if (aborted()) return;
    const fromNow = fromVersion === undefined;
    let lookedAgain = !fromNow;
    try {
      const options: WatchOptions = { ...(fromNow ? { progress: true } : { fromVersion }), ...(signal === undefined ? {} : { signal }) };
      for await (const event of deps.watch({ key: entry.key }, options)) {
        compactedInARow = 0;
        if (event.type === "delete" || (how.anyChange === true && event.type === "put")) return event;
        if (event.type === "progress" && !lookedAgain) {
          // The stream runs from before this look: a key still there is deleted, if ever, on it.
          lookedAgain = true;
          if (!(await present())) return;
        }
      }
      return;
    } catch (error) {
      if (!(error instanceof KvClientError && error.code === "compacted")) throw error;
      compactedInARow++;
      // The first 410 is answered at once; a node that keeps answering 410 is asked again only after a pause.
      if (compactedInARow > 1) await pause(Math.min(COMPACTED_RETRY_MS_MAX, COMPACTED_RETRY_MS_MIN * 2 ** Math.min(16, compactedInARow - 2)), signal);
      if (aborted()) return;
      const floor = error.details.compactVersion;
      const start: number | undefined = fromVersion;
      const usableFloor: number | undefined = typeof floor === "number" && Number.isSafeInteger(floor) && start !== undefined && floor > start ? floor : undefined;
      if (!(await present())) return;
      fromVersion = usableFloor;
    }
  }
}

/**
 * Watches a holder's own `key` (created at `fence`) until another client deletes or writes it: true
 * then; false once `signal` aborts (released, or lost with the lease). A stream that ends or fails
 * (an outage: the keeper judges the lease meanwhile) is opened again after a pause, checking first
 * that the key is still as it was created.
 */
async function untilKeyChanged(deps: LockDeps, prefix: string, key: string, fence: number, signal: AbortSignal): Promise<"deleted" | "written" | "expired" | undefined> {
  const entry = { key, version: fence };
  let failures = 0;
  while (!signal.aborted) {
    try {
      const event = await untilDeleted(deps, prefix, entry, signal, { anyChange: true, present: () => stillAsListed(deps, prefix, entry) });
      if (signal.aborted) return undefined;
      // Its own lease running out takes the key at the same version: that is the lease lost, not another client.
      if (event?.type === "delete") return event.reason === "lease_expired" ? "expired" : "deleted";
      if (event?.type === "put") return "written";
      // The stream ended, or a look after a 410 found it changed: looked at once more.
      const now = (await listQueue(deps, prefix)).find((listed) => listed.key === key);
      if (signal.aborted) return undefined;
      if (now === undefined) return "deleted";
      if (now.version !== fence) return "written";
      failures = 0;
    } catch {
      if (signal.aborted) return undefined;
      failures++;
      await pause(Math.min(COMPACTED_RETRY_MS_MAX, COMPACTED_RETRY_MS_MIN * 2 ** Math.min(16, failures)), signal);
    }
  }
  return undefined;
}

/**
 * `call`'s value, or `signal`'s reason as soon as it aborts; a value that comes after the abort
 * goes to `late` (to undo what it did).
 */
function untilAborted<T>(call: Promise<T>, signal: AbortSignal | undefined, late: (value: T) => void): Promise<T> {
  if (signal === undefined) return call;
  return new Promise<T>((resolve, reject) => {
    // Given to `late` from here alone once aborted (it was also given by the handler below: found in review).
    const onAbort = () => {
      call.then(late, () => undefined);
      reject(signal.reason);
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    call.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        if (!signal.aborted) resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(error);
      },
    );
  });
}

/** Whether `entry` is still in the queue under `prefix` as it was listed: not deleted, not written over (a linearizable listing). */
async function stillAsListed(deps: LockDeps, prefix: string, entry: Pick<KvEntry, "key" | "version">): Promise<boolean> {
  return (await listQueue(deps, prefix)).some((listed) => listed.key === entry.key && listed.version === entry.version);
}

/** Resolves after `ms`, or at once when `signal` aborts (the caller then sees it aborted). */
function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted === true) return resolve();
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

/** The contenders for a name, oldest (the holder) first: keys `prefix<digits>`, by the version they were created at. */
async function listQueue(deps: LockDeps, prefix: string): Promise<KvEntry[]> {
  const queue: KvEntry[] = [];
  for await (const page of deps.list(prefix)) {
    for (const item of page.items) {
      if (/^[1-9][0-9]*$/.test(item.key.slice(prefix.length))) queue.push(item);
      if (queue.length > CONTENDERS_MAX) throw new KvClientError("bad_answer", 0, `more than ${CONTENDERS_MAX} contenders under '${prefix}'`);
    }
  }
  return queue.sort((a, b) => a.version - b.version);
}

/**
 * The leaders of election `name`, each as its key's entry (`text`/`bytes` hold the value it
 * campaigned with), as they change: the current one first (when there is one), then each new one.
 * A leader that came and went between two looks may be skipped; none is given twice in a row.
 */
export async function* observeLeaders(deps: LockDeps, name: string, options: { readonly signal?: AbortSignal } = {}): AsyncGenerator<KvEntry, void, undefined> {
  const prefix = queuePrefix(name);
  const signal = options.signal;
  // Its watches take the room reserved here, as a lock's do (see acquire); given back when it ends.
  yield* holdingRoom(deps.reserveWatchRoom(), signal, observeWithRoom(deps, prefix, signal));
}

async function* observeWithRoom(deps: LockDeps, prefix: string, signal: AbortSignal | undefined): AsyncGenerator<KvEntry, void, undefined> {
  let last: KvEntry | undefined;
  while (signal?.aborted !== true) {
    const queue = await listQueue(deps, prefix);
    const leader = queue[0];
    if (leader === undefined) {
      // No candidate: watch the whole queue from now; the stream's first progress event says from
      // when, and a second look after it catches a candidate that came in between.
      const controller = new AbortController();
      const both = signal === undefined ? controller.signal : AbortSignal.any([signal, controller.signal]);
      let looked = false;
      for await (const event of deps.watch({ prefix }, { progress: true, signal: both })) {
        if (event.type === "put" && /^[1-9][0-9]*$/.test(event.key.slice(prefix.length))) break;
        if (event.type === "progress" && !looked) {
          looked = true;
          if ((await listQueue(deps, prefix)).length > 0) break;
        }
      }
      controller.abort();
      continue;
    }
    if (last === undefined || last.key !== leader.key) {
      last = leader;
      yield leader;
    }
    // A leader whose key is written over is no leader any more (it resigns: see acquire), as one deleted.
    await untilDeleted(deps, prefix, leader, signal, { anyChange: true, present: () => stillAsListed(deps, prefix, leader) });
  }
}

function queuePrefix(name: string): string {
  if (typeof name !== "string" || name === "") throw new KvClientError("bad_request", 0, "a lock or election needs a non-empty name");
  // "/" would queue under every key that starts with a slash (found in a black-box review: its key was "/298").
  if (/^\/+$/.test(name)) throw new KvClientError("bad_request", 0, `a lock or election name needs a character besides '/', got ${JSON.stringify(name)}`);
  // 'a' and 'a/' name one queue, as they always have (docs/client.md says so).
  return name.endsWith("/") ? name : `${name}/`;
}
