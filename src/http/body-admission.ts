import { KvError } from "../lib/kv-error.ts";
import { declaredBodyBytes } from "./read-body.ts";
import { markRefusedUnread } from "./unread-refusals.ts";

/**
 * How many bytes of large write bodies a node takes in at once (issue 12). Bun reads a request's
 * body only once the handler asks for it (until then the bytes wait in the sockets and the client
 * is held back), so a write whose body is large waits here first, and holds its bytes until it is
 * answered.
 *
 * Why: when 64 clients began writing 1 MiB values at once on a fresh cluster, the leader's thread
 * read and copied 64 MiB of bodies in one go (134 MB of fresh memory in 0.6 s, 33,000 page faults),
 * its 10 ms timer fired up to 250 ms late, and the followers, hearing no heartbeat, elected another
 * leader (BENCHMARKS.md, eighteenth session). Writes past what the node can propose gain nothing by
 * being read early: at most `pendingBytesMax` (src/node/proposals.ts) are proposed and not applied.
 *
 * Bodies under `largeBytesMin` pass at once and count nothing. A large one waits, first come first
 * served, until what is admitted leaves room for it, or nothing is admitted (so one body larger than
 * the bound still goes, alone). One that waits past `waitMsMax` is refused with `overloaded`: it did
 * not apply, so a retry is safe (the handler then reads and discards its body, as for a 413).
 *
 * A body that arrives slowly holds its share until it arrived or `--request-read-timeout` passed,
 * and one sent without Content-Length counts as the largest allowed: enough of them at once make
 * the other large writes wait, then refuse them (docs/operations.md). Small bodies never wait.
 */
export class BodyAdmission {
  private admitted = 0;
  private readonly waiters: Waiter[] = [];

  constructor(
    /** Bytes of large bodies read at once and not yet answered. */
    readonly bytesMax: number,
    /** Bodies of fewer bytes pass without waiting. */
    readonly largeBytesMin: number,
    /** The longest a body waits to be read. */
    readonly waitMsMax: number,
  ) {}

  /**
   * Waits until a body of `bytes` may be read. Resolves with its release (call it once the request
   * is answered), or undefined when the body is small; rejects with `overloaded` past `waitMsMax`,
   * and at once when `signal` aborts (the client hung up: its place goes to the next in line).
   */
  admit(bytes: number, signal?: AbortSignal): Promise<(() => void) | undefined> {
    if (bytes < this.largeBytesMin) return Promise.resolve(undefined);
    if (signal?.aborted === true) return Promise.reject(clientGone());
    return new Promise((resolve, reject) => {
      const waiter: Waiter = { bytes, resolve, timer: undefined, stopWaiting: undefined };
      const leave = (error: KvError) => {
        const at = this.waiters.indexOf(waiter);
        if (at < 0) return;
        this.waiters.splice(at, 1);
        clearTimeout(waiter.timer);
        waiter.stopWaiting?.();
        reject(error);
        // It may have been first in line, holding back smaller ones that fit.
        this.admitWaiting();
      };
      waiter.timer = setTimeout(
        () =>
          leave(
            new KvError("overloaded", `too many large writes are being received at once: this one waited ${this.waitMsMax} ms for its turn and was not applied (retrying is safe)`, {
              retryAfterS: 1,
            }),
          ),
        this.waitMsMax,
      );
      if (signal !== undefined) {
        const onAbort = () => leave(clientGone());
        signal.addEventListener("abort", onAbort, { once: true });
        waiter.stopWaiting = () => signal.removeEventListener("abort", onAbort);
      }
      this.waiters.push(waiter);
      this.admitWaiting();
    });
  }

  /** Bytes admitted and not yet released. */
  admittedBytes(): number {
    return this.admitted;
  }

  /** Bodies waiting to be read. */
  waitingCount(): number {
    return this.waiters.length;
  }

  private admitWaiting(): void {
    for (;;) {
      const next = this.waiters[0];
      if (next === undefined) return;
      if (this.admitted > 0 && this.admitted + next.bytes > this.bytesMax) return;
      this.waiters.shift();
      clearTimeout(next.timer);
      next.stopWaiting?.();
      this.admitted += next.bytes;
      let released = false;
      next.resolve(() => {
        if (released) return;
        released = true;
        this.admitted -= next.bytes;
        this.admitWaiting();
      });
    }
  }
}

interface Waiter {
  readonly bytes: number;
  readonly resolve: (release: () => void) => void;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** Stops listening for the client hanging up. */
  stopWaiting: (() => void) | undefined;
}

/** A waiter whose client hung up: nobody reads this answer. */
function clientGone(): KvError {
  return new KvError("bad_request", "the client closed the connection before its body was read");
}

/**
 * The bytes a request's body will take, for admission: its Content-Length, or `bytesMax` when it
 * is sent without one (chunked). 0 when the body will be refused before it is read (a malformed
 * Content-Length, or one over `bytesMax`): nothing to wait for.
 */
export function bodyBytesToAdmit(request: Request, bytesMax: number): number {
  const declared = declaredBodyBytes(request);
  if (declared === undefined) return request.body === null ? 0 : bytesMax;
  return Number.isNaN(declared) || declared > bytesMax ? 0 : declared;
}

/**
 * What a write route (PUT /kv/{key}, POST /txn) does before it reads its body. A large body
 * (`largeBytesMin` or more) is refused unread when the node would refuse the write anyway
 * (`refuseEarly`: a follower redirects it to the leader), and otherwise waits its turn; either
 * refusal marks the request refused unread (unread-refusals.ts), so that its lingering close
 * discards the whole body. A small one goes on at once and is read first, so its connection stays
 * open. Resolves with the release to call once the write is answered (undefined for a small body).
 */
export async function admitWriteBody(
  admission: BodyAdmission | undefined,
  request: Request,
  bytesMax: number,
  refuseEarly: () => void,
): Promise<(() => void) | undefined> {
  if (admission === undefined) return undefined;
  const bytes = bodyBytesToAdmit(request, bytesMax);
  if (bytes < admission.largeBytesMin) return undefined;
  try {
    refuseEarly();
    return await admission.admit(bytes, request.signal);
  } catch (error) {
    markRefusedUnread(request);
    throw error;
  }
}
