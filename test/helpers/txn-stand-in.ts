// A stand-in for a node's POST /txn: answers every call with `answer` and records each call's
// Idempotency-Key (null when none came), for tests of what the client and `kv txn` send.

/** Listens on a port the OS picks; `stop()` closes it (call it in `finally`). */
export function txnStandIn(answer: unknown): { readonly url: string; readonly keys: (string | null)[]; stop(): void } {
  const keys: (string | null)[] = [];
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      keys.push(request.headers.get("idempotency-key"));
      return Response.json(answer);
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, keys, stop: () => server.stop(true) };
}
