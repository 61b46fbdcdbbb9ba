import { KvError } from "../lib/kv-error.ts";

/** A client waiting for an answer, with the time (monotonic ms) after which it gets `timeout`. */
export interface Waiter<T> {
  resolve(value: T): void;
  reject(error: KvError): void;
  readonly deadlineMs: number;
}

/** The error a waiter gets when its deadline passes: the outcome is unknown. */
export function timeoutError(what: string, requestTimeoutMs: number): KvError {
  return new KvError("timeout", `${what} did not complete in ${requestTimeoutMs} ms; its outcome is unknown`);
}

/** A read that timed out: it changed nothing, so unlike a write's its outcome is known. */
export function readTimeoutError(requestTimeoutMs: number): KvError {
  return new KvError("timeout", `the read did not complete in ${requestTimeoutMs} ms (no leader confirmed it in time); it changed nothing, so retrying is safe`);
}
