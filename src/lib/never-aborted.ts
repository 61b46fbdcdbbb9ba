/**
 * A signal that is never aborted, for APIs that want one where nothing can be cancelled: the peer
 * server's handlers (a unary call's body is read before the handler runs and its answer is built in
 * memory) and the interceptors of a peer call whose caller gave no signal (src/transport/socket-transport.ts:
 * the deadline and cancellation act on the socket, not on this).
 */
export const neverAborted: AbortSignal = new AbortController().signal;
