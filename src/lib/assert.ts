/**
 * Assertions for programmer errors: a broken invariant crashes loudly instead of corrupting data.
 * Operating errors (bad peer input, full disk, a bad request) are handled where they arise, never asserted.
 */
export class AssertionError extends Error {
  override name = "AssertionError";
}

/** Throws when `condition` is false: the code that called it holds a bug. */
export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** Marks a branch the type system proves unreachable; a `switch` over a union ends with it. */
export function unreachable(value: never, message = "unreachable"): never {
  throw new AssertionError(`${message}: ${JSON.stringify(value)}`);
}
