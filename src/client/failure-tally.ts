/**
 * The failures behind one error message: each distinct one once, in the order first seen, with how
 * often it happened, so an endpoint failing alike on every pass round the endpoints reads once
 * (found in review: the same endpoints alternated up to eight times in a line).
 */
export class FailureTally {
  private readonly counts = new Map<string, number>();

  /** Keeps at most `kept` distinct failures; past that the oldest goes. */
  constructor(private readonly kept: number) {}

  note(what: string): void {
    this.counts.set(what, (this.counts.get(what) ?? 0) + 1);
    if (this.counts.size > this.kept) this.counts.delete(this.counts.keys().next().value as string);
  }

  clear(): void {
    this.counts.clear();
  }

  get size(): number {
    return this.counts.size;
  }

  /** Each failure, `what (×n)` when it happened more than once. */
  lines(): string[] {
    return [...this.counts].map(([what, count]) => (count > 1 ? `${what} (×${count})` : what));
  }
}
