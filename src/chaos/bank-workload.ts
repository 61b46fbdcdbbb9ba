/**
 * The bank workload of `kv chaos random` (src/chaos/bank.ts) over the HTTP API: clients read two
 * accounts with a read-only `POST /txn`, then move some money between them with one `POST /txn`
 * conditional on both versions, or read several accounts at once (a read-only transaction of every
 * account, or `GET /kv?prefix=`), against random nodes while the nemesis works.
 *
 * Every `roundOps` client turns (a read, or a transfer's read and transaction) the clients move to
 * fresh accounts (`bank/r{round}/…`). A retired round is closed while the run goes on: once its
 * turns are done, every account is read through the leader (linearizably) as its final state, and
 * its history is judged by `findBankViolation` and dropped, keeping counts. So memory holds a few
 * rounds, however long the run.
 */
import { assert } from "../lib/assert.ts";
import { createPrng, type Prng } from "../lib/prng.ts";
import { type BankAccountSeen, type BankOperation, balanceOf, BANK_PREFIX, describeBankOperation, findBankViolation, planTransfer } from "./bank.ts";
import { type Outcome, request } from "./client.ts";
import type { ChaosCluster } from "./cluster.ts";

/** Accounts per round. */
const ACCOUNTS = 4;
/** A refused or unanswered call waits this long before the client's next one. */
const BACKOFF_MS = 10;
/** How long a round's closing read keeps trying for an answer. */
const CLOSING_READ_TIMEOUT_MS = 30_000;
/** Tries of one transfer: the first, and retries with the same Idempotency-Key after an unknown outcome. */
const TRANSFER_ATTEMPTS_MAX = 3;
/** Share of a client's turns that read several accounts at once (the rest are transfers). */
const READ_SHARE = 0.3;

export interface BankWorkloadOptions {
  readonly seed: number;
  readonly clients: number;
  readonly roundOps: number;
  readonly requestTimeoutMs: number;
  /**
   * Listings of every account are served at this consistency (`kv chaos random --read-consistency`):
   * stale ones may miss what returned before them, and the checker says so. Transactions are linearizable.
   */
  readonly listConsistency: "linearizable" | "lease" | "stale";
  readonly nowMs: () => number;
  readonly print: (line: string) => void;
}

interface Round {
  readonly index: number;
  readonly accounts: readonly string[];
  readonly history: BankOperation[];
  clientOperations: number;
  inFlight: number;
  drained: Promise<void> | undefined;
  resolveDrained: (() => void) | undefined;
}

/** What the bank workload did and found over a run. */
export interface BankSummary {
  readonly clients: number;
  readonly rounds: number;
  readonly transfers: number;
  readonly transfersApplied: number;
  readonly transfersUnknown: number;
  readonly reads: number;
  /** Rounds whose closing read of every account got no answer (so their final state went unchecked). */
  readonly unansweredClosingReads: number;
  /** The first broken rule, with its round and evidence lines. */
  readonly violation?: { readonly round: number; readonly reason: string; readonly evidence: readonly string[] };
}

/** A bank client's own generator, apart from `kv chaos random`'s other clients (ids from 1,001). */
function bankClientPrng(seed: number, clientId: number): Prng {
  return createPrng((seed ^ Math.imul(clientId + 1_001, 0x85ebca6b)) >>> 0);
}

/** The JSON of a transaction of `gets`, or of a transfer's comparisons and puts. */
function txnBody(compare: readonly { key: string; version: number }[], puts: readonly { key: string; value: string }[], gets: readonly string[]): string {
  return JSON.stringify({
    compare: compare.map(({ key, version }) => ({ key, version })),
    success: [...puts.map(({ key, value }) => ({ put: { key, value } })), ...gets.map((key) => ({ get: { key } }))],
    failure: [],
  });
}

/** The accounts a read-only transaction's answer holds, in the order asked; undefined when it is not one. */
function seenInTxn(body: Uint8Array): BankAccountSeen[] | undefined {
  const answer = JSON.parse(new TextDecoder().decode(body)) as { results?: { get?: { key: string; found: boolean; value?: unknown; version?: number } }[] };
  const seen: BankAccountSeen[] = [];
  for (const result of answer.results ?? []) {
    const get = result.get;
    if (get === undefined) return undefined;
    if (!get.found) seen.push({ key: get.key, value: null, version: 0 });
    else if (typeof get.value === "string" && typeof get.version === "number") seen.push({ key: get.key, value: get.value, version: get.version });
    else return undefined;
  }
  return seen;
}

/** The accounts of a listing's answer, every one of `accounts` (absent when not listed). */
function seenInList(body: Uint8Array, accounts: readonly string[]): BankAccountSeen[] {
  const answer = JSON.parse(new TextDecoder().decode(body)) as { items: { key: string; value: unknown; version: number }[] };
  const byKey = new Map(answer.items.map((item) => [item.key, item]));
  return accounts.map((key) => {
    const item = byKey.get(key);
    return item === undefined ? { key, value: null, version: 0 } : { key, value: typeof item.value === "string" ? item.value : JSON.stringify(item.value), version: item.version };
  });
}

export class BankWorkload {
  private current: Round;
  private readonly retired: Round[] = [];
  private stopping = false;
  private running: Promise<void>[] = [];
  private closer: Promise<void> = Promise.resolve();
  private wakeCloser: () => void = () => {};
  private nextId = 1;
  private readonly counts = { rounds: 0, transfers: 0, transfersApplied: 0, transfersUnknown: 0, reads: 0, unansweredClosingReads: 0 };
  private violation: BankSummary["violation"];

  constructor(
    private readonly cluster: ChaosCluster,
    private readonly opts: BankWorkloadOptions,
  ) {
    this.current = this.newRound(0);
  }

  start(): void {
    this.running = Array.from({ length: this.opts.clients }, (_, i) => this.client(i + 1));
    this.closer = this.closeRetired();
  }

  /** Stops the clients, waits for their calls, and closes every round (the current one too). */
  async stop(): Promise<BankSummary> {
    this.stopping = true;
    await Promise.all(this.running);
    if (this.opts.clients > 0) this.retire();
    this.wakeCloser();
    await this.closer;
    return { clients: this.opts.clients, ...this.counts, ...(this.violation === undefined ? {} : { violation: this.violation }) };
  }

  private newRound(index: number): Round {
    return { index, accounts: Array.from({ length: ACCOUNTS }, (_, i) => `${BANK_PREFIX}r${index}/${i}`), history: [], clientOperations: 0, inFlight: 0, drained: undefined, resolveDrained: undefined };
  }

  private retire(): void {
    const full = this.current;
    full.drained = new Promise((resolve) => (full.resolveDrained = resolve));
    if (full.inFlight === 0) full.resolveDrained?.();
    this.retired.push(full);
    this.current = this.newRound(full.index + 1);
    this.wakeCloser();
  }

  private reachable(id: number): boolean {
    const state = this.cluster.node(id).state;
    return state === "running" || state === "paused";
  }

  private pickNode(prng: Prng): number | undefined {
    const ids = this.cluster.nodes.map((n) => n.id).filter((id) => this.reachable(id));
    return ids.length === 0 ? undefined : prng.pick(ids);
  }

  private async client(clientId: number): Promise<void> {
    const prng = bankClientPrng(this.opts.seed, clientId);
    while (!this.stopping) {
      if (this.current.clientOperations >= this.opts.roundOps) this.retire();
      const round = this.current;
      const node = this.pickNode(prng);
      if (node === undefined) {
        await Bun.sleep(BACKOFF_MS);
        continue;
      }
      // One turn (a read, or a transfer's read and its transaction) holds the round open.
      round.clientOperations++;
      round.inFlight++;
      let answered: boolean;
      if (prng.chance(READ_SHARE)) {
        answered = (await this.read(round, clientId, node, prng.chance(0.5) ? "list" : round.accounts)) !== undefined;
      } else {
        const [from, to] = prng.shuffle(round.accounts) as [string, string];
        const read = await this.read(round, clientId, node, [from, to]);
        const [fromSeen, toSeen] = read?.seen ?? [];
        const balance = fromSeen === undefined ? undefined : balanceOf(fromSeen);
        answered = read !== undefined && fromSeen !== undefined && toSeen !== undefined && balance !== undefined;
        if (answered) answered = await this.transfer(round, clientId, read?.node ?? node, fromSeen as BankAccountSeen, toSeen as BankAccountSeen, prng.intInclusive(0, Math.max(0, balance as number)));
      }
      round.inFlight--;
      if (round.inFlight === 0) round.resolveDrained?.();
      if (!answered && !this.stopping) await Bun.sleep(BACKOFF_MS);
    }
  }

  /** One request from `node` on, following one 307 to the node it names; the node that answered last. */
  private async send(node: number, method: "GET" | "POST", path: string, body: string | undefined, headers: Readonly<Record<string, string>> = {}): Promise<{ outcome: Outcome; node: number }> {
    let target = node;
    let outcome = await request(this.cluster.node(target).httpUrl, method, path, body, this.opts.requestTimeoutMs, headers);
    if (outcome.kind === "fail" && outcome.status === 307 && outcome.location !== undefined) {
      const location = outcome.location;
      const next = this.cluster.nodes.find((n) => this.reachable(n.id) && n.httpUrl !== "" && location.startsWith(`${n.httpUrl}/`));
      if (next !== undefined) {
        target = next.id;
        outcome = await request(next.httpUrl, method, path, body, this.opts.requestTimeoutMs, headers);
      }
    }
    return { outcome, node: target };
  }

  /** Reads `keys` in one read-only transaction, or every account by listing; undefined unless answered. */
  private async read(round: Round, clientId: number, node: number, keys: readonly string[] | "list"): Promise<{ seen: BankAccountSeen[]; node: number } | undefined> {
    const id = this.nextId++;
    const callMs = Math.floor(this.opts.nowMs());
    const listing = keys === "list";
    const prefix = `${BANK_PREFIX}r${round.index}/`;
    const { outcome, node: answeredBy } = listing
      ? await this.send(node, "GET", `/kv?prefix=${encodeURIComponent(prefix)}&limit=1000&consistency=${this.opts.listConsistency}`, undefined)
      : await this.send(node, "POST", "/txn", txnBody([], [], keys));
    const returnMs = Math.ceil(this.opts.nowMs());
    let seen: BankAccountSeen[] | undefined;
    if (outcome.kind === "ok" && outcome.status === 200) seen = listing ? seenInList(outcome.body, round.accounts) : seenInTxn(outcome.body);
    if (outcome.kind === "ok" && seen === undefined) throw new Error(`a read of the bank's accounts was answered with something else: ${new TextDecoder().decode(outcome.body).slice(0, 200)}`);
    if (seen === undefined) return undefined;
    round.history.push({ id, clientId, kind: "read", callMs, returnMs, outcome: "ok", seen, full: listing || seen.length === round.accounts.length });
    this.counts.reads++;
    return { seen, node: answeredBy };
  }

  /** One transfer, as both accounts were read; true when it was answered. */
  /**
   * One transfer, as both accounts were read, sent with an Idempotency-Key: an attempt whose outcome
   * is unknown is sent again with the same key, to the leader, up to TRANSFER_ATTEMPTS_MAX times. A
   * retry of one that applied must get its first answer (the session), not "comparisons failed": the
   * checker's writer rule catches that. A refusal after an unknown attempt says nothing of that
   * attempt, so the transfer stays unknown. True when it was answered.
   */
  private async transfer(round: Round, clientId: number, node: number, from: BankAccountSeen, to: BankAccountSeen, amount: number): Promise<boolean> {
    const id = this.nextId++;
    const { compared, writes } = planTransfer(id, from, to, amount);
    const body = txnBody(compared, writes, []);
    const headers = { "idempotency-key": `bank-${this.opts.seed}-${clientId}-${id}` };
    const callMs = Math.floor(this.opts.nowMs());
    let outcome: Outcome = (await this.send(node, "POST", "/txn", body, headers)).outcome;
    let unknownSoFar = outcome.kind === "unknown";
    for (let attempt = 1; outcome.kind === "unknown" && attempt < TRANSFER_ATTEMPTS_MAX && !this.stopping; attempt++) {
      const leader = await this.cluster.waitForLeader(undefined, this.opts.requestTimeoutMs).catch(() => node);
      outcome = (await this.send(leader, "POST", "/txn", body, headers)).outcome;
      unknownSoFar ||= outcome.kind === "unknown";
    }
    const returnMs = Math.ceil(this.opts.nowMs());
    const called = { id, clientId, kind: "transfer" as const, callMs, writes, compared };
    let op: BankOperation;
    if (outcome.kind === "ok") {
      const answer = JSON.parse(new TextDecoder().decode(outcome.body)) as { succeeded: boolean; version: number };
      op = { ...called, returnMs, outcome: "ok", succeeded: answer.succeeded, version: answer.version };
      if (answer.succeeded) this.counts.transfersApplied++;
    } else if (outcome.kind === "fail" && !unknownSoFar) {
      op = { ...called, returnMs, outcome: "fail" };
    } else {
      op = { ...called, outcome: "unknown" };
      this.counts.transfersUnknown++;
    }
    this.counts.transfers++;
    round.history.push(op);
    return op.outcome !== "unknown";
  }

  /** Closes retired rounds in order as they drain, until stopped with none left. */
  private async closeRetired(): Promise<void> {
    for (;;) {
      const round = this.retired[0];
      if (round === undefined) {
        if (this.stopping) return;
        await new Promise<void>((resolve) => (this.wakeCloser = resolve));
        continue;
      }
      await round.drained;
      assert(round.inFlight === 0, `bank round ${round.index} closed with calls in flight`);
      const finalState = await this.closingRead(round);
      if (finalState === undefined) this.counts.unansweredClosingReads++;
      const found = findBankViolation(round.history, round.accounts.length, finalState);
      this.counts.rounds++;
      if (found !== undefined && this.violation === undefined) this.violation = { round: round.index, reason: found.reason, evidence: found.evidence.map(describeBankOperation) };
      const transfers = round.history.filter((op) => op.kind === "transfer");
      this.opts.print(
        `bank round ${round.index} checked: ${transfers.length} transfers (${transfers.filter((op) => op.outcome === "ok" && op.succeeded === true).length} applied), ` +
          `${round.history.length - transfers.length} reads, ${found === undefined ? (finalState === undefined ? "consistent (closing read unanswered)" : "consistent") : `VIOLATION: ${found.reason}`}`,
      );
      this.retired.shift();
    }
  }

  /** Every account of `round` read through the leader (linearizably), retried until answered. */
  private async closingRead(round: Round): Promise<BankAccountSeen[] | undefined> {
    const deadlineMs = performance.now() + CLOSING_READ_TIMEOUT_MS;
    while (performance.now() < deadlineMs) {
      const leader = await this.cluster.waitForLeader(undefined, Math.max(1, deadlineMs - performance.now())).catch(() => undefined);
      if (leader === undefined) return undefined;
      const prefix = `${BANK_PREFIX}r${round.index}/`;
      const { outcome } = await this.send(leader, "GET", `/kv?prefix=${encodeURIComponent(prefix)}&limit=1000&consistency=linearizable`, undefined);
      if (outcome.kind === "ok") return seenInList(outcome.body, round.accounts);
      await Bun.sleep(BACKOFF_MS);
    }
    return undefined;
  }
}
