/**
 * The time a leader stamps on an idempotent write (src/kv/command.ts `IdempotencyStamp`), from
 * which every replica decides the write's session: apply moves the state machine's session clock
 * to the stamp (never back) and forgets sessions at least a window old by it (src/kv/apply-plan.ts).
 *
 * The leader's wall clock, as it is, may be far ahead: a step of NTP, or a failover to a node whose
 * clock runs ten minutes fast. One such stamp moved the session clock past every live session's
 * window at once, and a client's retry seconds after its write was acknowledged applied it again,
 * over another client's acknowledged write (found in review). So a stamp is the wall clock, but no
 * further past this node's own last stamp than `rateMax` times the time that passed since, by its
 * monotonic clock; its first stamp, and any after another leader took the session clock past that
 * bound, start instead from the session clock it has applied, at the time it first saw it (no
 * sooner than it was stamped). The session clock then advances at most `rateMax` times as fast as real time, whichever leaders
 * stamp: a session lives at least its window / `rateMax` of real time, and normally the whole
 * window, since with clocks in step the wall clock is within that bound and is the stamp. A session
 * clock behind real time (a leader whose clock ran slow, an idle cluster whose leader changed)
 * catches up at `rateMax - 1` of real time, living sessions longer meanwhile (harmless: they are
 * capped by count too).
 *
 * Decided on the leader alone, as before: apply, and so every replica and every release, reads the
 * stamp as it always did.
 */
import type { Clock } from "../lib/clock.ts";

/** How much faster than real time the session clock may advance (see the file comment). */
export const sessionClockRateMax = 1.25;

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
    const boundAt = (base: { readonly atMs: number; readonly monoMs: number }) => Math.floor(base.atMs + (monoMs - base.monoMs) * sessionClockRateMax);
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
