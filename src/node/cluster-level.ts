/**
 * Which commands the whole cluster applies. A command a release did not know stops that release's
 * apply rather than being misread (src/kv/command.ts), so a leader proposes a command above level 1
 * only once every member of its configuration has said, in a peer call or answer since this node
 * started (`Transport.peerCommandLevel`), that it applies the command's level. Members tell their
 * level in every call and answer, so a running cluster knows within a heartbeat.
 *
 * Once one such command applied, the state machine records its level (src/kv/apply-plan.ts,
 * `commandLevelKey`): the whole configuration said it applied it then. From that on a member that
 * has said nothing since this node started (down, or cut off) is taken to apply the recorded level,
 * as etcd keeps its cluster version once raised; only one that says a lower level holds the command
 * back. Before any, a member that has said nothing holds it back.
 *
 * A member restarted on an older release while down stops applying at the first such entry it
 * meets (it refuses, it does not misread); upgrading it again resumes it.
 */
import { KvError } from "../lib/kv-error.ts";
import type { NodeId } from "../raft/types.ts";

/** A member that has not said it applies a level: what it said (undefined: nothing since this node started). */
export interface LaggingMember {
  readonly id: NodeId;
  readonly level: number | undefined;
}

/**
 * The members, other than `selfId`, that do not apply `level` as far as this node knows, in id
 * order: those that said a lower one, and those that said nothing unless `recordedLevel` (what the
 * state machine recorded the cluster applied) reaches it.
 */
export function membersBelowLevel(
  level: number,
  members: readonly NodeId[],
  selfId: NodeId,
  peerLevel: (id: NodeId) => number | undefined,
  recordedLevel = 1,
): LaggingMember[] {
  const lagging: LaggingMember[] = [];
  for (const id of [...new Set(members)].sort((a, b) => a - b)) {
    if (id === selfId) continue;
    const said = peerLevel(id);
    if (said === undefined ? recordedLevel < level : said < level) lagging.push({ id, level: said });
  }
  return lagging;
}

/**
 * `upgrade_required` for a command of `level` (`what`, for the message) when a member has not said
 * it applies it; undefined when every member has.
 */
export function belowLevelRefusal(
  what: string,
  level: number,
  release: string,
  members: readonly NodeId[],
  selfId: NodeId,
  peerLevel: (id: NodeId) => number | undefined,
  recordedLevel = 1,
): KvError | undefined {
  const lagging = membersBelowLevel(level, members, selfId, peerLevel, recordedLevel);
  if (lagging.length === 0) return undefined;
  // "last said": it may be down now (found in a black-box review: the message read as if it ran).
  const said = lagging.map((member) =>
    member.level === undefined ? `node ${member.id} has not answered this leader since it started` : `node ${member.id} last said it runs an older release`,
  );
  return new KvError(
    "upgrade_required",
    `${what} needs every member on kv ${release} or later, and ${said.join("; ")}: nothing was proposed. Upgrade or bring up those members, then retry`,
    { members: lagging.map((member) => member.id) },
  );
}
