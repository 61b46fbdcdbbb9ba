/**
 * `GET /hash`: a SHA-256 of the state machine's rows at this node's applied index
 * (src/kv/state-hash.ts), for comparing replicas (`kv hash`, and every `kv chaos` scenario's last
 * check). The image is read on the storage's own read transaction, like a backup's
 * (src/http/snapshot-route.ts), a bounded batch per turn of the event loop: a large state costs the
 * node's thread a few milliseconds at a time, never the whole read at once.
 */
import { KvError } from "../lib/kv-error.ts";
import { StateHasher, type StateHash } from "../kv/state-hash.ts";
import type { KvNodeApi, ReadConsistency, SnapshotImage } from "../node/api.ts";
import { jsonResponse } from "./http-error.ts";

/** Bytes of keys and values read and hashed per turn. */
export const HASH_BATCH_BYTES = 1024 * 1024;
/** Hashes computed at once on one node: each holds a read transaction and a share of the thread. */
export const HASHES_MAX = 1;

/** The route's handler; `consistency` is parsed by the caller (app.ts). */
export function createHashHandler(node: KvNodeApi, stopping?: AbortSignal): (request: Request, consistency: ReadConsistency) => Promise<Response> {
  let running = 0;
  return async (request, consistency) => {
    const openSnapshot = node.openSnapshot?.bind(node);
    if (openSnapshot === undefined) throw new KvError("not_found", "this node does not serve hashes");
    if (running >= HASHES_MAX) throw new KvError("overloaded", `${HASHES_MAX} hash is being computed on this node already; retry once it is done`);
    running++;
    try {
      return jsonResponse(await hashImage(await openSnapshot(consistency), request.signal, stopping), 200);
    } finally {
      running--;
    }
  };
}

/**
 * Hashes `image` a batch per turn, then closes it; stops early (and closes it) once the client goes
 * away, or the node begins to stop (before it closes the storage under the image: found in review,
 * the read that followed was answered 500 as a bug).
 */
async function hashImage(image: SnapshotImage, signal: AbortSignal, stopping: AbortSignal | undefined): Promise<StateHash> {
  try {
    const hasher = new StateHasher();
    for (;;) {
      if (signal.aborted) throw new KvError("bad_request", "the client went away before the hash was done");
      if (stopping?.aborted === true) throw new KvError("unavailable", "the node is stopping: ask another node, or this one once it is back");
      const rows = image.next(HASH_BATCH_BYTES);
      if (rows.length === 0) return hasher.finish(image.metadata);
      for (const row of rows) hasher.add(row);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    image.close();
  }
}
