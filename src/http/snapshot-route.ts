/**
 * `GET /snapshot`: streams a backup of the state machine (the format is in src/kv/backup-format.ts)
 * as of one applied index, opened after a linearizable read, so it holds every write acknowledged
 * before the request. The image is read on the storage's own read transaction (writes go on) a
 * bounded batch at a time, only as fast as the client takes it: the stream pulls the next batch
 * when the previous one was sent, and a turn of the event loop later, so the node's loop runs
 * between batches. The client token is checked in front of every route but /health
 * (src/http/http-handler.ts), this one included.
 */
import { Elysia } from "elysia";
import { BACKUP_CONTENT_TYPE, BackupWriter } from "../kv/backup-format.ts";
import { KvError } from "../lib/kv-error.ts";
import type { KvNodeApi, SnapshotImage } from "../node/api.ts";
import { errorResponse } from "./http-error.ts";
import { routeDocs } from "./openapi.ts";

/** Rows read per pull: about this many bytes of keys and values (the image reader's own bound). */
export const SNAPSHOT_BATCH_BYTES = 1024 * 1024;
/** Backups streaming at once from one node: each holds a read transaction, which keeps the WAL from being checkpointed. */
export const SNAPSHOT_STREAMS_MAX = 2;
/** A client that takes nothing for this long loses its stream (and the node its read transaction). */
export const SNAPSHOT_IDLE_MS_MAX = 60_000;

/** The route as an Elysia plugin: `app.use(createSnapshotRoute(node))`. */
export function createSnapshotRoute(node: KvNodeApi, logFailure?: (event: string, fields: Record<string, unknown>) => void) {
  let streams = 0;

  const handle = async (request: Request): Promise<Response> => {
    const openSnapshot = node.openSnapshot?.bind(node);
    if (openSnapshot === undefined) throw new KvError("not_found", "this node does not serve snapshots");
    if (streams >= SNAPSHOT_STREAMS_MAX) {
      throw new KvError("overloaded", `${SNAPSHOT_STREAMS_MAX} snapshots are streaming from this node already; retry once one is done`);
    }
    streams++;
    let image: SnapshotImage;
    try {
      image = await openSnapshot();
    } catch (error) {
      streams--;
      throw error;
    }
    let open = true;
    let idleTimer: ReturnType<typeof setTimeout> | undefined;
    const finish = () => {
      if (!open) return;
      open = false;
      streams--;
      clearTimeout(idleTimer);
      image.close();
    };
    const status = node.status();
    const clusterId = node.members?.().clusterId;
    const writer = new BackupWriter({
      index: image.metadata.index,
      term: image.metadata.term,
      voters: image.metadata.voters,
      learners: image.metadata.learners ?? [],
      addresses: image.addresses,
      createdAtMs: Date.now(),
      source: { nodeId: status.id, ...(clusterId === undefined ? {} : { clusterId }) },
    });
    let begun = false;
    request.signal.addEventListener("abort", finish, { once: true });
    const body = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          clearTimeout(idleTimer);
          if (!open) return;
          // A turn of the event loop before each batch: with a client that takes bytes as fast as
          // they come, the server pulled batch after batch without one, and the node's loop (its
          // ticks, heartbeats, peers' calls) waited for the whole backup (found in a black-box
          // review: every save from a leader holding 43 MB deposed it).
          if (begun) await new Promise<void>((resolve) => setImmediate(resolve));
          if (!open) return;
          try {
            if (!begun) {
              begun = true;
              controller.enqueue(writer.begin());
            } else {
              const rows = image.next(SNAPSHOT_BATCH_BYTES);
              if (rows.length > 0) {
                controller.enqueue(writer.rows(rows));
              } else {
                controller.enqueue(writer.end());
                finish();
                controller.close();
                return;
              }
            }
          } catch (error) {
            // The storage failed mid-read: the client sees a cut stream, which its reader refuses (no
            // trailer), and cannot be told why: the node says it (found in a black-box review: a
            // damaged row showed only as ECONNRESET to kv snapshot save).
            logFailure?.("snapshot stream failed", {
              error: error instanceof Error ? error.message : String(error),
              index: image.metadata.index,
              detail: "a backup stream broke off midway: the client gets a cut stream, which it refuses; a damaged row in the state machine (kv hash says corrupt) ends every backup from this node until the data dir is replaced",
            });
            finish();
            controller.error(error);
            return;
          }
          idleTimer = setTimeout(() => {
            finish();
            try {
              controller.error(new Error(`the client took nothing for ${SNAPSHOT_IDLE_MS_MAX} ms`));
            } catch {
              // already closed
            }
          }, SNAPSHOT_IDLE_MS_MAX);
          idleTimer.unref?.(); // a stalled client must not keep a stopping process alive
        },
        cancel() {
          finish();
        },
      },
      // Nothing is read ahead of the client: a slow client holds one batch, not the whole image.
      { highWaterMark: 0 },
    );
    return new Response(body, {
      status: 200,
      headers: {
        "content-type": BACKUP_CONTENT_TYPE,
        "cache-control": "no-store",
        "x-kv-snapshot-index": String(image.metadata.index),
        "content-disposition": `attachment; filename="kv-snapshot-${image.metadata.index}.kvsnap"`,
      },
    });
  };

  return new Elysia().get(
    "/snapshot",
    async ({ request }) => {
      try {
        // The router answers HEAD with this GET route: it would stream a whole backup to drop it.
        if (request.method === "HEAD") throw new KvError("method_not_allowed", "HEAD is not allowed on /snapshot: it serves GET");
        return await handle(request);
      } catch (error) {
        return errorResponse(error, request, error instanceof KvError && error.code === "method_not_allowed" ? { allow: "GET" } : {});
      }
    },
    { parse: "none", detail: routeDocs.snapshot },
  );
}
