/**
 * `<data dir>/votes-held`: present while the node holds its votes after starting with an empty log
 * (src/raft/raft.ts, `votesHeld`), so that a restart before the hold ended holds them again: a
 * wiped node that got part of the log and then restarted would otherwise vote on that part (found
 * in review). Written durably when the hold begins, removed when it ends.
 */
import { existsSync, rmSync } from "node:fs";
import { join } from "node:path";
import { writeLineDurably } from "./cluster-id.ts";
import { fsyncPath } from "./fsync-path.ts";

/** The file, inside the data dir, whose presence says the node's votes are held. */
export const VOTE_HOLD_FILE = "votes-held";

/** Whether the data dir records a hold not yet ended. */
export function voteHoldRecorded(dataDir: string): boolean {
  return existsSync(join(dataDir, VOTE_HOLD_FILE));
}

/** Records that the hold began (durable when it returns) or ended. */
export function recordVoteHold(dataDir: string, held: boolean): void {
  if (held) {
    writeLineDurably(dataDir, VOTE_HOLD_FILE, "held");
    return;
  }
  rmSync(join(dataDir, VOTE_HOLD_FILE), { force: true });
  fsyncPath(dataDir);
}
