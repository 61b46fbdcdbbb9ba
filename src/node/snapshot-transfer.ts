import { AssertionError, assert } from "../lib/assert.ts";
import { isDiskFull } from "../lib/disk-full.ts";
import { isStorageCorruption } from "../lib/storage-damage.ts";
import type { NodeId, SnapshotMetadata, SnapshotRequest } from "../raft/types.ts";
import type { MemberAddress } from "../kv/membership.ts";
import type { SnapshotStats } from "./api.ts";
import type { KvStorage } from "../storage/kv-storage.ts";
import { SnapshotChunkRefusedError, type SnapshotChunk, type Transport } from "../transport/transport.ts";

/** What the snapshot room needs from the node loop that owns it. */
export interface SnapshotHost {
  readonly id: NodeId;
  readonly storage: KvStorage;
  log?(event: string, fields: Record<string, unknown>): void;
  /** The transport while the node runs. */
  transport(): Transport | undefined;
  /** Whether this node knows where peer `id` is (messages to others are dropped). */
  peerKnown(id: NodeId): boolean;
  /** The core's current term. */
  term(): number;
  /** The node stopped, or was never started. */
  stopped(): boolean;
  /** The image id whose install a full disk is holding up (a blocked Ready at stage "install"), if any. */
  blockedInstall(): string | undefined;
  /** A full disk froze the loop. */
  diskFull(): boolean;
  /** A transfer to `to` failed or outlived its term: the core probes the follower again (outside any turn). */
  transferFailed(to: NodeId): void;
  /** Steps InstallSnapshot for the image staged in full, in a turn of its own, now. */
  install(message: SnapshotRequest): void;
  /** Whether `message` still waits in the inbox (the turn that steps it has not run). */
  waitsInInbox(message: SnapshotRequest): boolean;
  /** A bug: the node stops. */
  fail(error: Error): void;
}

/**
 * Snapshot transfer in and out (thesis §5.1, chapter 5): a leader streams its state machine, as
 * applied when the transfer starts, to a follower that needs compacted entries, one transfer per
 * peer at a time; a follower stages the chunks it receives, in order, and hands the core an
 * InstallSnapshot once the last is staged. The staged image is kept until it is installed or
 * refused: a full disk at install keeps it, and the node waits for space.
 */
export class SnapshotTransfer {
  /** Transfers to followers in flight: at most one per peer. */
  private readonly outgoing = new Map<NodeId, AbortController>();
  /** Transfers to each peer that failed in a row in one term, since its last that completed (see `ended`). */
  private readonly failuresInARow = new Map<NodeId, { term: number; count: number }>();
  private sequence = 0;
  /** Since this node started: images streamed to followers, attempts that failed, images received whole, and installed. */
  private readonly counts = { sent: 0, sendFailed: 0, received: 0, installed: 0 };
  /** The image being received, chunk by chunk; its rows are staged in storage. */
  private incoming: { from: NodeId; imageId: string; metadata: SnapshotMetadata; nextSeq: number; rows: number; valueBytes: number } | undefined;
  /** The InstallSnapshot of the image staged in full, until it is installed or refused. */
  private awaitingInstall: SnapshotRequest | undefined;
  /**
   * A full disk refused the image being staged, and this node has neither staged a chunk since nor
   * applied past `applied` (see `stagingDiskFull`).
   */
  private stagingFull: { applied: number; error: unknown } | undefined;
  /** Member addresses that came with the image being staged (at most one image). */
  private stagedAddresses: { imageId: string; addresses: readonly MemberAddress[] } | undefined;

  constructor(private readonly host: SnapshotHost) {}

  /**
   * A full disk refused the image being received, and nothing since showed space: no chunk staged,
   * nothing applied (a node caught up otherwise needs no image). The node then reports a full disk
   * as it does for a Ready the disk refused: a review saw a follower refuse a 440 MB image for
   * minutes, its leader resending it, while its status, health and metrics said nothing.
   */
  stagingDiskFull(): boolean {
    if (this.stagingFull !== undefined && this.host.storage.appliedIndex() > this.stagingFull.applied) this.stagingFull = undefined;
    return this.stagingFull !== undefined;
  }

  /** The error with which a full disk refused the image being staged (while `stagingDiskFull`). */
  stagingError(): unknown {
    return this.stagingFull?.error;
  }

  /**
   * The index of the image being received or waiting to be installed (0: none). A follower waiting
   * for one is that far along at least, whatever its log says: see KvNode.healthy.
   */
  receivingIndex(): number {
    return this.incoming?.metadata.index ?? this.awaitingInstall?.snapshot.index ?? 0;
  }

  /** Peers a transfer is streaming to now. */
  sending(): Iterable<NodeId> {
    return this.outgoing.keys();
  }

  /** Aborts every outgoing transfer (the node stopped leading, or stops). */
  abortAll(reason: string): void {
    for (const transfer of this.outgoing.values()) transfer.abort(new Error(reason));
  }

  /** The member addresses that came with image `imageId` ([] if none did). */
  addressesFor(imageId: string): readonly MemberAddress[] {
    return this.stagedAddresses?.imageId === imageId ? this.stagedAddresses.addresses : [];
  }

  /** The staged image was installed: its addresses are in storage now. */
  installed(): void {
    this.stagedAddresses = undefined;
    this.counts.installed++;
  }

  /** See `KvNodeApi.snapshotStats`. */
  stats(): SnapshotStats {
    return { ...this.counts };
  }

  /**
   * Streams the state machine as applied now to a follower that needs compacted entries. The core
   * asked with the metadata it saw (`imageId` ""); the image sent is read later and may stand at a
   * later index: the receiver's core gets the image's own metadata, which is at or past the one the
   * leader's progress waits for. A request while a transfer to that peer is in flight is dropped
   * (the one in flight answers it). A transfer that fails, or outlives the term it began in, tells
   * the core so that it probes the follower again.
   */
  start(message: SnapshotRequest): void {
    const transport = this.host.transport();
    const to = message.to;
    if (transport === undefined || this.outgoing.has(to) || !this.host.peerKnown(to)) return;
    const abort = new AbortController();
    this.outgoing.set(to, abort);
    const term = message.term;
    const transfer = async (): Promise<void> => {
      await Promise.resolve(); // begin once this Ready is carried out: the image then holds what it applied
      const image = this.host.storage.openImage();
      try {
        if (image.metadata.index === 0) throw new Error("nothing is applied yet");
        const imageId = `${this.host.id}.${term}.${++this.sequence}`;
        this.host.log?.("snapshot send", { to, index: image.metadata.index, term: image.metadata.term, imageId });
        await transport.sendSnapshot(to, image, { imageId, term, signal: abort.signal });
        this.host.log?.("snapshot sent", { to, index: image.metadata.index, imageId });
        this.counts.sent++;
      } finally {
        image.close();
      }
    };
    void transfer().then(
      () => this.ended(to, term, undefined),
      (error: unknown) => this.ended(to, term, error instanceof Error ? error : new Error(String(error))),
    );
  }

  private ended(to: NodeId, term: number, error: Error | undefined): void {
    this.outgoing.delete(to);
    if (this.host.stopped()) return;
    const before = this.failuresInARow.get(to);
    const failures = error === undefined ? 0 : (before?.term === term ? before.count : 0) + 1;
    if (failures === 0) this.failuresInARow.delete(to);
    else this.failuresInARow.set(to, { term, count: failures });
    if (error !== undefined) {
      this.counts.sendFailed++;
      this.host.log?.("snapshot send failed", { to, error: error.message, failuresInARow: failures });
      // This node's own state machine is damaged (a row failing its checksum as the image was
      // read): it stops, naming the damage and the way back, as on any damage it meets itself.
      // Leading on, it sent the image again every 5 s for ever and a member joining through it
      // never caught up, while it answered healthy (found in a black-box review).
      if (isStorageCorruption(error) || isStorageCorruption(error.cause)) {
        this.host.fail(error);
        return;
      }
    }
    if (error === undefined && this.host.term() === term) return; // the follower's answer moves its progress on
    // The first failure is retried at once. After that the core waits for the follower: its
    // progress probes again once the follower has answered many heartbeats without the image
    // (snapshotHeartbeatsMax, 5 s at the defaults). A follower whose disk refused a 440 MB image
    // was sent it again about 2.5 times a second, half a core of the leader's reading it (found in
    // a black-box review).
    if (failures <= 1) this.host.transferFailed(to);
  }

  /**
   * Stages one chunk of an image a leader streams to us, in order. The last chunk becomes the
   * InstallSnapshot message for the core, stepped at once (one turn) so that the image it names is
   * still the one staged when the Ready installs it. Throws SnapshotChunkRefusedError for a chunk
   * of a stale term, of an image not being staged, out of order, or one storage refuses; the sender
   * then gives the image up.
   */
  receiveChunk(chunk: SnapshotChunk): void {
    const host = this.host;
    if (host.stopped()) throw new SnapshotChunkRefusedError("the node is not running");
    // Frozen by a full disk: a new image would replace one whose install waits, and could not be staged anyway.
    if (host.diskFull()) throw new SnapshotChunkRefusedError("the disk is full: no image is taken until space returns");
    const term = host.term();
    if (chunk.term < term) throw new SnapshotChunkRefusedError(`chunk of term ${chunk.term}; this node is in term ${term}`);
    let incoming = this.incoming;
    const awaiting = this.awaitingInstall;
    if (chunk.seq === 0 && awaiting !== undefined && (host.waitsInInbox(awaiting) || host.blockedInstall() === awaiting.imageId)) {
      // Staged over, the image waiting for its install would be gone when the turn steps it (the
      // install's check stopped the node), with its members' addresses (found in review).
      throw new SnapshotChunkRefusedError(`image ${chunk.imageId}: image ${awaiting.imageId} waits to be installed here`);
    }
    if (chunk.seq === 0) {
      assert(chunk.metadata !== undefined, "the transport checks the first chunk has metadata");
      incoming = { from: chunk.from, imageId: chunk.imageId, metadata: chunk.metadata, nextSeq: 0, rows: 0, valueBytes: 0 };
      this.stagedAddresses = { imageId: chunk.imageId, addresses: chunk.addresses ?? [] };
      this.incoming = undefined;
    } else if (incoming === undefined || incoming.imageId !== chunk.imageId || incoming.from !== chunk.from) {
      throw new SnapshotChunkRefusedError(`chunk ${chunk.seq} of image ${chunk.imageId}, which this node is not staging`);
    } else if (chunk.seq !== incoming.nextSeq) {
      throw new SnapshotChunkRefusedError(`chunk ${chunk.seq} of image ${chunk.imageId} out of order: expected ${incoming.nextSeq}`);
    }
    for (const row of chunk.rows) {
      if (row.version > incoming.metadata.index) {
        throw new SnapshotChunkRefusedError(`image ${chunk.imageId} has a row of version ${row.version}, past its index ${incoming.metadata.index}`);
      }
    }
    try {
      host.storage.stageImageChunk(chunk.imageId, chunk.rows, chunk.seq === 0);
    } catch (error: unknown) {
      this.incoming = undefined;
      if (error instanceof AssertionError) {
        host.fail(error);
        throw error;
      }
      if (isDiskFull(error)) this.stagingFull ??= { applied: host.storage.appliedIndex(), error };
      throw new SnapshotChunkRefusedError(`staging failed: ${error instanceof Error ? error.message : String(error)}`);
    }
    this.stagingFull = undefined;
    if (chunk.seq === 0) {
      host.log?.("snapshot receive", { from: chunk.from, index: incoming.metadata.index, term: incoming.metadata.term, imageId: chunk.imageId });
    }
    incoming.nextSeq = chunk.seq + 1;
    incoming.rows += chunk.rows.length;
    for (const row of chunk.rows) incoming.valueBytes += row.value.byteLength;
    this.incoming = chunk.done ? undefined : incoming;
    if (!chunk.done) return;
    const message: SnapshotRequest = { type: "snapshot", from: chunk.from, to: host.id, term: chunk.term, snapshot: incoming.metadata, imageId: chunk.imageId };
    // rows and valueBytes: with the time since "snapshot receive", how fast the image streamed (bench:compare --large-data).
    host.log?.("snapshot received", {
      from: chunk.from,
      index: incoming.metadata.index,
      imageId: chunk.imageId,
      chunks: incoming.nextSeq,
      rows: incoming.rows,
      valueBytes: incoming.valueBytes,
    });
    this.counts.received++;
    this.awaitingInstall = message;
    host.install(message);
  }

  /**
   * After a turn: drops the staged image once it is installed or refused (our log already covered
   * it, or its term was stale). One the turn could not carry out yet is kept: a full disk blocked its
   * install, or blocked the turn before its message was stepped. An image still arriving is dropped
   * once this node has applied up to its index by the log: its sender stopped streaming (it crashed,
   * lost its leadership, or gave up), and no chunk says so. Kept, the partial staging file (up to
   * the state machine's size) stayed until the next image or a restart.
   */
  settleStaged(): void {
    const incoming = this.incoming;
    if (incoming !== undefined && !this.host.stopped() && this.host.storage.appliedIndex() >= incoming.metadata.index) {
      this.incoming = undefined;
      this.host.log?.("snapshot receive abandoned", { from: incoming.from, index: incoming.metadata.index, imageId: incoming.imageId, appliedIndex: this.host.storage.appliedIndex() });
      this.discardStaged();
      return;
    }
    const awaiting = this.awaitingInstall;
    if (awaiting === undefined || this.host.stopped()) return;
    if (this.host.blockedInstall() === awaiting.imageId) return;
    if (this.host.waitsInInbox(awaiting)) return;
    this.awaitingInstall = undefined;
    // Installed or refused. A next image being staged is not this one's to drop (found in review).
    if (this.incoming === undefined || this.incoming.imageId === awaiting.imageId) this.discardStaged();
  }

  private discardStaged(): void {
    try {
      this.host.storage.discardStagedImage();
    } catch (error) {
      // Left staged on a full disk: bounded (one image), and the next image's first chunk drops it.
      if (!isDiskFull(error)) throw error;
    }
  }
}
