/**
 * Requests a route refused before reading their bodies, though the bodies were within its limits: a
 * follower's redirect of a large write, a leader's refusal of one before anything about it is
 * known (src/node/api.ts `refuseWriteUnlessLeader`), or one that waited too long for its turn
 * (body-admission.ts, `admitWriteBody`, marks them). The client sends such a body whole before it
 * reads the answer, and must get the answer (to send the write again), so the lingering close that
 * discards the rest (http-handler.ts) allows as much, and as long, as reading it would have been
 * allowed; other unread bodies (a 413, a 401) get the shorter bound.
 */
const refused = new WeakSet<Request>();

/** Marks `request` refused before its body was read (see above). */
export function markRefusedUnread(request: Request): void {
  refused.add(request);
}

/** Whether `request` was refused before its body was read (see `markRefusedUnread`). */
export function wasRefusedUnread(request: Request): boolean {
  return refused.has(request);
}
