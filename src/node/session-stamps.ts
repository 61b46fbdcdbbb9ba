/**
 * The time a leader stamps on an idempotent write (src/kv/command.ts `IdempotencyStamp`), from
 * which every replica decides the write's session: apply moves the state machine's session clock
 * to the stamp (never back) and forgets sessions at least a window old by it (src/kv/apply-plan.ts).
 *
 * The leader's wall clock, as it is, may be far ahead: a step of NTP, or a failover to a node whose
 * clock runs ten minutes fast. One such stamp moved the session clock past every live session's
 * window at once, and a client's retry seconds after its write was acknowledged applied it again,
 * over another client's acknowledged write (found in review). So a stamp is the wall clock, but no
 * further past this node's own last stamp than the time that passed since, by its monotonic clock;
 * its first stamp, and any after another leader took the session clock past that bound, start
 * instead from the session clock it has applied, at the time it first saw it (no sooner than it was
 * stamped). The session clock then advances no faster than real time, whichever leaders stamp: a
 * session lives at least its window of real time. A session clock behind real time (a leader whose
 * clock ran slow, a leader elected after the cluster was idle) stays behind, which is harmless:
 * sessions are judged by that clock alone, and it still advances as real time does. It never
 * catches up faster: at 1.25 times real time, sessions made while it did lived a fifth less than
 * their window (found in review: a retry 8.5 s into a 10 s window applied again after a restart).
 *
 * Decided on the leader alone, as before: apply, and so every replica and every release, reads the
 * stamp as it always did.
 */
import type { Clock } from "../lib/clock.ts";


export class SessionStamps {
  /**
   * Where the bound starts: this node's last stamp and when (monotonic ms) it made it, or an applied
   * session clock and when this node first saw it, when that is past the bound (another leader's
   * stamps took it there).
   */
  private base: { readonly atMs: number; readonly monoMs: number } | undefined;

  constructor(
    private readonly clock: Clock,
    /** The session clock as this node applied it (0: none yet). */
    private readonly appliedSessionClockMs: () => number,
  ) {}

  /** The stamp for a write proposed now (and the time a retry's session is judged live by). */
  now(): number {
    const wallMs = Math.max(0, Math.floor(this.clock.wallMs()));
    const appliedMs = this.appliedSessionClockMs();
    const monoMs = this.clock.nowMs();
    const boundAt = (base: { readonly atMs: number; readonly monoMs: number }) => Math.floor(base.atMs + (monoMs - base.monoMs));
    // No stamp applied yet, no session to protect: the wall clock.
    let stampMs = wallMs;
    if (appliedMs > 0) {
      if (this.base === undefined || appliedMs > boundAt(this.base)) this.base = { atMs: appliedMs, monoMs };
      stampMs = Math.min(wallMs, boundAt(this.base));
    }
    // A stamp is as good a start as any for the bound (it is at or below it): a leader that stamps
    // again later measures from its own last stamp, not from when it next reads the applied clock.
    this.base = { atMs: stampMs, monoMs };
    return stampMs;
  }
}
