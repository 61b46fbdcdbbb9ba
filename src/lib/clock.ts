/**
 * Time for the node loop. Only the loop turns milliseconds into Raft ticks; the core never sees a clock.
 * `createSystemClock` is the real one; tests use `ManualClock` to step time by hand.
 */
export interface Clock {
  /** Milliseconds on a monotonic scale. */
  nowMs(): number;
  /**
   * The wall clock, in ms since the Unix epoch: comparable across machines, but it may jump. Only a
   * leader stamping an idempotent write reads it (src/node/kv-node.ts); apply reads the stamp.
   */
  wallMs(): number;
  /** Calls `fn` every `intervalMs` until the returned function is called. */
  every(intervalMs: number, fn: () => void): () => void;
}

export function createSystemClock(): Clock {
  return {
    nowMs: () => performance.now(),
    wallMs: () => Date.now(),
    every(intervalMs, fn) {
      const timer = setInterval(fn, intervalMs);
      return () => clearInterval(timer);
    },
  };
}

/**
 * A clock that moves only when told: `advance(ms)` fires every interval due, in order. Its wall
 * clock is `wallStartMs` plus the time advanced plus `wallSkewMs` (set it to model a clock behind).
 */
export class ManualClock implements Clock {
  private now = 0;
  /** Added to the wall clock only. */
  wallSkewMs = 0;

  constructor(private readonly wallStartMs = 1_700_000_000_000) {}

  wallMs(): number {
    return this.wallStartMs + this.now + this.wallSkewMs;
  }
  private timers: { intervalMs: number; nextMs: number; fn: () => void; active: boolean }[] = [];

  nowMs(): number {
    return this.now;
  }

  every(intervalMs: number, fn: () => void): () => void {
    const timer = { intervalMs, nextMs: this.now + intervalMs, fn, active: true };
    this.timers.push(timer);
    return () => {
      timer.active = false;
    };
  }

  advance(ms: number): void {
    const target = this.now + ms;
    for (;;) {
      const due = this.timers.filter((t) => t.active && t.nextMs <= target).sort((a, b) => a.nextMs - b.nextMs)[0];
      if (due === undefined) break;
      this.now = due.nextMs;
      due.nextMs += due.intervalMs;
      due.fn();
    }
    this.now = target;
    this.timers = this.timers.filter((t) => t.active);
  }
}
