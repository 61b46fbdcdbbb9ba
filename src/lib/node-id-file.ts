/**
 * The node id a data dir belongs to, kept in `<data dir>/node-id` from its first start on. Raft's
 * safety rests on each server keeping its own vote and log: a data dir copied from node 1 and
 * started as node 3 would give node 3 node 1's vote and log, and node 3's own vote in a term could
 * be cast twice (a black-box review copied one and it started without a word). A data dir from
 * before this file (0.5.0 and earlier) gets one at its next start, with the id it starts as.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { writeLineDurably } from "./cluster-id.ts";

/** The file, inside the data dir, that holds the id of the node it belongs to. */
export const NODE_ID_FILE = "node-id";

/** The data dir belongs to another node, or its `node-id` file holds no node id. */
export class NodeIdFileError extends Error {
  override name = "NodeIdFileError";
}

/**
 * Throws NodeIdFileError when the data dir names another node, or holds no id, in its `node-id`
 * file; reads only, so a refused data dir is left as it was (checked before the storage opens).
 * Returns whether the data dir names a node at all.
 */
export function checkNodeId(dataDir: string, id: number): boolean {
  const file = join(dataDir, NODE_ID_FILE);
  if (!existsSync(file)) return false;
  let stored: string;
  try {
    stored = readFileSync(file, "utf8").trim();
  } catch (error) {
    // A directory, or a file this user may not read (found in review: a stack trace said so).
    throw new NodeIdFileError(`${file} cannot be read (${error instanceof Error ? error.message : String(error)}): make it a file holding the id this data dir was started with, or move the data dir aside`);
  }
  if (!/^[1-9][0-9]{0,15}$/.test(stored)) {
    throw new NodeIdFileError(`${file} holds ${JSON.stringify(stored.slice(0, 40))}, not a node id: restore it (the id this data dir was started with), or move the data dir aside`);
  }
  if (Number(stored) !== id) {
    throw new NodeIdFileError(
      `${dataDir} is node ${stored}'s data dir (${file}), not node ${id}'s: start node ${stored} on it, or give node ${id} its own (a copy of another node's data dir carries that node's vote and log, which a node must never take for its own)`,
    );
  }
  return true;
}

/** Records that the data dir belongs to node `id` when it names no node yet (after `checkNodeId`). */
export function recordNodeId(dataDir: string, id: number): void {
  if (!checkNodeId(dataDir, id)) writeLineDurably(dataDir, NODE_ID_FILE, String(id));
}
