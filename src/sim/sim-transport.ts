import { Code, ConnectError, type Client, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import type { RaftService, SendRequest, SendResponse, SendSnapshotChunkRequest } from "../gen/kv/v1/raft_pb.ts";
import { COMMAND_LEVEL } from "../kv/command.ts";
import { assert } from "../lib/assert.ts";
import type { Prng } from "../lib/prng.ts";
import type { Message, NodeId } from "../raft/types.ts";
import { type CallRefusal, defaultConnectTransportLimits } from "../transport/connect-transport.ts";
import { CLUSTER_NONCE_HEADER } from "../transport/peer-auth.ts";
import { createPeerCallGuard } from "../transport/peer-call-guard.ts";
import { REMOVED_REFUSAL_PREFIX, rememberedSince, setIdentityHeaders } from "../transport/peer-identity.ts";
import { createPeerSender, type PeerSender } from "../transport/peer-sender.ts";
import { createRaftServiceRoutes } from "../transport/raft-service.ts";
import { createReplySlots, dispatchToPeer, replyWaitMs, type ReplySlots } from "../transport/reply-slots.ts";
import { streamSnapshot } from "../transport/snapshot-sender.ts";
import type { MessageHandler, SnapshotChunkHandler, Transport } from "../transport/transport.ts";

/**
 * Who a process is to its peers, and what it knows of the configuration, as the server's transport
 * reads them (src/server/create-server.ts): each call carries the caller's `memberSince` of itself
 * and its cluster nonce, and the receiver's guard (src/transport/peer-call-guard.ts) refuses an
 * older process of a re-added id and tells a removed caller so (`onRemoved`).
 */
export interface SimPeerIdentity {
  memberSince(id: NodeId): number | undefined;
  readonly configuration: { isMember(id: NodeId): boolean; appliedIndex(): number };
  clusterNonce(): string | undefined;
  onRemoved(by: NodeId, detail: string): void;
}

/** Fault settings of the simulated network, drawn from a run's seed. */
export interface SimNetworkFaults {
  /** Probability that a call's connection is reset before it arrives (the caller hears `unavailable`). */
  lossRate: number;
  /** Each leg of a call (request, answer) takes a uniform [delayMsMin, delayMsMax]; different delays reorder calls. */
  delayMsMin: number;
  delayMsMax: number;
}

/** The simulator's side of the network: its clock, and whether a node's process can run now. */
export interface SimNetworkHost {
  /** Simulated milliseconds now. */
  nowMs(): number;
  /** Runs `fn` `delayMs` from now on the simulated clock; returns what cancels it. */
  at(delayMs: number, fn: () => void): (() => void) | void;
  /** False while the process at `address` (its node id, see `Endpoint`) is stalled: nothing it would do on its own (answer a call, stage a chunk) happens. */
  running(address: number): boolean;
  /** Sees every batch of messages a process (at address `from`) hands its transport, as it hands them (for checkers). */
  sent?(from: number, messages: readonly Message[]): void;
}

/** Settings of the simulated transport that the server takes from its own configuration. */
export interface SimNetworkOptions {
  /** Deadline of every message call (the server's `rpcTimeoutMs`). */
  readonly rpcTimeoutMs: number;
  /** Keys and values per snapshot chunk: small, so a transfer takes many calls and can fail midway. */
  readonly snapshotChunkBytesMax?: number;
  /** The level of log commands node `id` applies (default: this release's, `COMMAND_LEVEL`). */
  readonly commandLevelOf?: (id: NodeId) => number;
}

/** The service methods a node's peer server runs (as createRaftServiceRoutes registers them). */
interface PeerService {
  send(request: SendRequest, context: HandlerContext): Promise<SendResponse>;
  sendSnapshotChunk(request: SendSnapshotChunkRequest, context: HandlerContext): object;
}

/**
 * One running process's side of the network: its peer server and its senders. `address` is where
 * it is reached: its node id, except for an older process of an id that was removed and added
 * again (see `SimNetwork.readdress`), which nobody calls: its calls still carry its node id.
 */
interface Endpoint {
  readonly id: NodeId;
  address: number;
  readonly service: PeerService;
  readonly replySlots: ReplySlots;
  readonly senders: Map<NodeId, PeerSender>;
  readonly clients: Map<NodeId, Client<typeof RaftService>>;
  /** Aborts this process's snapshot transfers when it dies. */
  readonly transfers: AbortController;
  /** Calls from peers this process took and has not answered: a dead process resets them. */
  readonly open: Set<() => void>;
  /** Peers' advertised HTTP URLs, learned from their calls. */
  readonly peerHttpUrls: Map<NodeId, string>;
  alive: boolean;
}

/** Snapshot chunk size unless set: small, so a transfer takes many calls and can fail midway. */
const snapshotChunkBytesMaxDefault = 256;

/**
 * The in-memory network of a simulated cluster, run with the real transport's parts: each node's
 * messages go through the real per-peer sender (peer-sender.ts: a window of calls, one probe call
 * at a time to a peer that does not answer, a bounded queue that drops the oldest, no retries), are
 * validated by the real peer service (raft-service.ts), and its replies ride the answers to peers'
 * calls through the real reply slots (reply-slots.ts: `send` fills the oldest waiting call's answer,
 * `flush` answers, a call not flushed in time is answered with what it has). Snapshots stream
 * through the real `streamSnapshot`, one chunk per call. Only the wire is simulated: each leg of a
 * call takes a drawn delay; a cut link blackholes calls (the caller hears its deadline), a lost
 * call is a reset connection (`unavailable`), an answer whose way back is cut is lost, a process
 * that is down refuses calls, and one that dies resets the calls it held.
 */
export class SimNetwork {
  faults: SimNetworkFaults = { lossRate: 0, delayMsMin: 0, delayMsMax: 1 };
  /** By address (see `Endpoint`). */
  private readonly endpoints = new Map<number, Endpoint>();
  private readonly cut = new Set<string>();
  /** Addresses cut off from every other, whatever the partitions say (see `isolate`). */
  private readonly isolated = new Set<number>();
  /** Calls that reached their receiver, and calls lost (cut, reset, refused): proof the faults were exercised. */
  delivered = 0;
  lost = 0;
  /** Answers that carried replies (messages that rode a call instead of costing one). */
  repliesCarried = 0;
  /** Messages to a peer whose address the sender has not learned, with no call of that peer's to ride (see `connect`'s `knows`). */
  unaddressedDropped = 0;

  constructor(
    private readonly prng: Prng,
    private readonly host: SimNetworkHost,
    private readonly options: SimNetworkOptions,
  ) {}

  /** The transport node `id` uses while this process runs. */
  /**
   * `knows`: whether the process has an address for a peer (its peer directory), as the real
   * transport's `peers` map: a message to a peer it has none for can only ride the answer to that
   * peer's own waiting call (connect-transport.ts), and is dropped when none waits. Without it,
   * every peer is reachable.
   */
  connect(id: NodeId, httpUrl: string, handler: MessageHandler, snapshotHandler: SnapshotChunkHandler, knows?: (peer: NodeId) => boolean, identity?: SimPeerIdentity): Transport {
    this.disconnectProcess(id);
    let self: Endpoint | undefined;
    /** Where this process is reached now (see `readdress`). */
    const address = (): number => self?.address ?? id;
    // The server's checks of a call's sender, run on the headers the caller's process sends.
    const checkSender =
      identity === undefined
        ? undefined
        : createPeerCallGuard({
            selfId: id,
            knows: (peer) => knows === undefined || knows(peer),
            memberSince: (peer) => identity.memberSince(peer),
            configuration: identity.configuration,
            clusterNonce: () => identity.clusterNonce(),
            closed: () => self !== undefined && !self.alive,
            refused: this.refused,
            log: () => {},
            onNonMember: () => {},
          });
    /** What every call of this process carries, read as it is sent (as the server's interceptors do). */
    // Per peer, as the server's transport keeps one with each peer's sender (dropped with it).
    const recipientSince = new Map<NodeId, () => number | undefined>();
    const callContext = (peer: NodeId): HandlerContext => {
      const requestHeader = new Headers();
      let since = recipientSince.get(peer);
      if (since === undefined) recipientSince.set(peer, (since = rememberedSince(() => identity?.memberSince(peer))));
      setIdentityHeaders(requestHeader, identity?.memberSince(id), since());
      const nonce = identity?.clusterNonce();
      if (nonce !== undefined) requestHeader.set(CLUSTER_NONCE_HEADER, nonce);
      return { requestHeader } as HandlerContext;
    };
    const limits = defaultConnectTransportLimits;
    const replySlots = createReplySlots({
      callMessagesMax: limits.callMessagesMax,
      callBytesMax: limits.callBytesMax,
      waitMsMax: replyWaitMs(this.options.rpcTimeoutMs),
      nowMs: () => this.host.nowMs(),
      after: (delayMs, fn) => {
        let cancelled = false;
        // A stalled process's timer fires once it runs again.
        this.whenRunning(address(), delayMs, () => {
          if (!cancelled) fn();
        });
        return () => {
          cancelled = true;
        };
      },
    });
    const peerHttpUrls = new Map<NodeId, string>();
    const peerCommandLevels = new Map<NodeId, number>();
    const commandLevel = this.options.commandLevelOf?.(id) ?? COMMAND_LEVEL;
    let service: PeerService | undefined;
    const router = {
      service: (_definition: unknown, implementation: PeerService) => {
        service = implementation;
      },
    } as unknown as ConnectRouter;
    createRaftServiceRoutes({
      selfId: id,
      selfHttpUrl: httpUrl,
      commandLevel,
      onCommandLevel: (from, level) => peerCommandLevels.set(from, level),
      onMessages: (messages, from, fromHttpUrl) => {
        if (fromHttpUrl !== "") peerHttpUrls.set(from, fromHttpUrl);
        handler(messages, from, fromHttpUrl);
      },
      awaitReply: (from) => replySlots.awaitReply(from),
      ...(identity === undefined ? {} : { memberSince: (peer: NodeId) => (self !== undefined && !self.alive ? undefined : identity.memberSince(peer)) }),
      onSnapshotChunk: snapshotHandler,
      ...(checkSender === undefined ? {} : { checkSender }),
    })(router);
    const endpoint: Endpoint = {
      id,
      address: id,
      service: service as PeerService,
      replySlots,
      senders: new Map(),
      clients: new Map(),
      transfers: new AbortController(),
      open: new Set(),
      peerHttpUrls,
      alive: true,
    };
    self = endpoint;
    this.endpoints.set(endpoint.address, endpoint);
    const clientFor = (peer: NodeId): Client<typeof RaftService> => {
      let client = endpoint.clients.get(peer);
      if (client === undefined) {
        client = {
          send: (request: SendRequest, callOptions?: { timeoutMs?: number; signal?: AbortSignal }) => {
            const context = callContext(peer);
            return this.call(endpoint.address, peer, (target) => target.service.send(request, context), callOptions, true);
          },
          sendSnapshotChunk: (request: SendSnapshotChunkRequest, callOptions?: { timeoutMs?: number; signal?: AbortSignal }) => {
            const context = callContext(peer);
            return this.call(endpoint.address, peer, (target) => Promise.resolve(target.service.sendSnapshotChunk(request, context)), callOptions, false);
          },
        } as unknown as Client<typeof RaftService>;
        endpoint.clients.set(peer, client);
      }
      return client;
    };
    const senderFor = (peer: NodeId): PeerSender => {
      let sender = endpoint.senders.get(peer);
      if (sender === undefined) {
        sender = createPeerSender({
          peerId: peer,
          selfId: id,
          selfHttpUrl: httpUrl,
          commandLevel,
          client: clientFor(peer),
          rpcTimeoutMs: this.options.rpcTimeoutMs,
          limits,
          log: () => {},
          onReply: (messages) => {
            if (endpoint.alive) handler(messages, peer, "");
          },
          onPeerHttpUrl: (url) => {
            if (endpoint.alive) peerHttpUrls.set(peer, url);
          },
          onPeerCommandLevel: (level) => {
            if (endpoint.alive) peerCommandLevels.set(peer, level);
          },
          // A peer that says this process was removed: its node learns it so (as the server's transport tells it).
          onRefused: (error) => {
            if (!endpoint.alive || error.code !== Code.PermissionDenied || !error.rawMessage.startsWith(REMOVED_REFUSAL_PREFIX) || identity === undefined) return;
            this.toldRemoved++;
            identity.onRemoved(peer, error.rawMessage);
          },
        });
        endpoint.senders.set(peer, sender);
      }
      return sender;
    };
    return {
      send: (messages) => {
        if (!endpoint.alive) return;
        this.host.sent?.(endpoint.address, messages);
        const byPeer = new Map<NodeId, Message[]>();
        for (const message of messages) {
          const list = byPeer.get(message.to);
          if (list === undefined) byPeer.set(message.to, [message]);
          else list.push(message);
        }
        for (const [peer, group] of byPeer) {
          if (knows === undefined || knows(peer)) dispatchToPeer(replySlots, peer, group, (messages) => senderFor(peer).enqueue(messages));
          else if (!replySlots.reply(peer, group)) this.unaddressedDropped += group.length;
        }
      },
      flush: (callsUpTo) => replySlots.flush(callsUpTo),
      callsArrived: () => replySlots.callsArrived(),
      sendSnapshot: (to, image, sendOptions) => {
        if (!endpoint.alive) return Promise.reject(new Error("the transport is closed"));
        const signal = sendOptions.signal === undefined ? endpoint.transfers.signal : AbortSignal.any([sendOptions.signal, endpoint.transfers.signal]);
        return streamSnapshot(clientFor(to), id, to, image, { ...sendOptions, signal }, {
          snapshotChunkBytesMax: this.options.snapshotChunkBytesMax ?? snapshotChunkBytesMaxDefault,
          snapshotChunkTimeoutMs: limits.snapshotChunkTimeoutMs,
        });
      },
      peerHttpUrl: (peer) => peerHttpUrls.get(peer),
      peerCommandLevel: (peer) => peerCommandLevels.get(peer),
      forgetPeerCommandLevel: (peer) => void peerCommandLevels.delete(peer),
      // As the server's transport: the sender's queue is dropped and its calls aborted.
      resetPeer: (peer) => {
        const key = `${id}>${peer}`;
        this.peerResets.set(key, (this.peerResets.get(key) ?? 0) + 1);
        peerHttpUrls.delete(peer);
        recipientSince.delete(peer);
        const sender = endpoint.senders.get(peer);
        if (sender === undefined) return;
        void sender.close();
        endpoint.senders.delete(peer);
        endpoint.clients.delete(peer);
      },
      close: async () => {
        if (this.endpoints.get(endpoint.address) === endpoint) this.disconnectProcess(endpoint.address);
      },
    };
  }

  /** `Transport.resetPeer` calls, by `${node}>${peer}` (for tests: what a node's applies and installs reset). */
  readonly peerResets = new Map<string, number>();

  /** Refusals as removed that reached a live caller's node (`SimPeerIdentity.onRemoved`). */
  toldRemoved = 0;
  /** Calls the receivers' guards refused, by reason (the server's `kv_peer_requests_refused_total`). */
  readonly refused: Record<CallRefusal, number> = { unauthenticated: 0, cluster_mismatch: 0, not_a_peer: 0, misaddressed: 0, stale_member: 0, stale_recipient: 0, removed: 0 };

  /**
   * The process of node `id` goes on running at `address`, which nobody calls: its id was removed
   * while it was cut off, and is about to be added again for a new process on an empty disk (which
   * connects at `id`). Its calls still carry its node id and its identity headers. Its isolation
   * (see `isolate`) moves with it.
   */
  readdress(id: NodeId, address: number): void {
    const endpoint = this.endpoints.get(id);
    assert(endpoint !== undefined && !this.endpoints.has(address), `readdress: node ${id} must be connected, and address ${address} free`);
    this.endpoints.delete(id);
    endpoint.address = address;
    this.endpoints.set(address, endpoint);
    if (this.isolated.delete(id)) this.isolated.add(address);
  }

  /** Cuts `address` off from every other until `release`, whatever partitions come and go meanwhile. */
  isolate(address: number): void {
    this.isolated.add(address);
  }

  release(address: number): void {
    this.isolated.delete(address);
  }

  /** The process at `address` died: its calls in flight end, the calls it held are reset, nothing reaches it until it connects again. */
  disconnectProcess(address: number): void {
    const endpoint = this.endpoints.get(address);
    if (endpoint === undefined) return;
    this.endpoints.delete(address);
    endpoint.alive = false;
    endpoint.transfers.abort(new Error("the process died"));
    for (const sender of endpoint.senders.values()) void sender.close();
    for (const reset of endpoint.open) reset();
    endpoint.open.clear();
    endpoint.replySlots.close(); // its answers are dropped: `alive` is false
  }

  /** Cuts the link from -> to (one direction). */
  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
  }

  isCut(from: number, to: number): boolean {
    return this.cut.has(`${from}>${to}`) || this.isolated.has(from) || this.isolated.has(to);
  }

  /** Splits the nodes into groups that reach only their own. */
  partition(groups: readonly (readonly NodeId[])[]): void {
    this.cut.clear();
    for (const a of groups) for (const b of groups) if (a !== b) for (const from of a) for (const to of b) this.cutLink(from, to);
  }

  heal(): void {
    this.cut.clear();
  }

  private delay(): number {
    return this.prng.intInclusive(this.faults.delayMsMin, this.faults.delayMsMax);
  }

  /** Runs `fn` `delayMs` from now, or once the process at `address` runs again if it is stalled then. */
  private whenRunning(address: number, delayMs: number, fn: () => void): void {
    const attempt = (): void => {
      if (this.host.running(address) || !this.endpoints.has(address)) fn();
      else this.host.at(5, attempt);
    };
    this.host.at(delayMs, attempt);
  }

  /**
   * One call from the process at address `from` to node `to` (reached at its id): the request leg, the receiver's handling (`handle`, the real peer
   * service), and the answer leg. Settles once: with the answer, or with the error the real client
   * reports (deadline, reset, refused, aborted).
   */
  private call<T>(from: number, to: NodeId, handle: (target: Endpoint) => Promise<T>, callOptions: { timeoutMs?: number; signal?: AbortSignal } = {}, carriesReplies: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      let cancelDeadline: (() => void) | void = undefined;
      // The caller's process takes the outcome (an answer, an error, its deadline) only while it
      // runs: a stalled one sees it once it runs again (found in review: a stalled node's answered
      // calls started new ones from a process that was standing still).
      const settle = (outcome: () => void): void => {
        if (settled) return;
        settled = true;
        callOptions.signal?.removeEventListener("abort", onAbort);
        cancelDeadline?.();
        if (this.host.running(from) || !this.endpoints.has(from)) outcome();
        else this.whenRunning(from, 0, outcome);
      };
      const fail = (code: Code, text: string) => settle(() => reject(new ConnectError(text, code)));
      const onAbort = () => fail(Code.Canceled, "the call was aborted");
      if (callOptions.signal?.aborted) return onAbort();
      callOptions.signal?.addEventListener("abort", onAbort);
      cancelDeadline = this.host.at(callOptions.timeoutMs ?? this.options.rpcTimeoutMs, () => fail(Code.DeadlineExceeded, "the deadline passed"));
      // A cut link blackholes the call: only the deadline ends it.
      if (this.isCut(from, to)) return void this.lost++;
      if (this.faults.lossRate > 0 && this.prng.chance(this.faults.lossRate)) {
        this.lost++;
        return this.host.at(this.delay(), () => fail(Code.Unavailable, "the connection was reset"));
      }
      this.host.at(this.delay(), () => {
        const target = this.endpoints.get(to);
        if (this.isCut(from, to)) return void this.lost++;
        if (target === undefined) {
          this.lost++;
          return fail(Code.Unavailable, "connection refused");
        }
        // A stalled receiver reads the call once it runs again (its socket holds it meanwhile).
        this.whenRunning(to, 0, () => {
          if (!target.alive) return fail(Code.Unavailable, "the connection was reset");
          this.delivered++;
          const reset = () => this.host.at(this.delay(), () => fail(Code.Unavailable, "the connection was reset"));
          target.open.add(reset);
          let handled: Promise<T>;
          try {
            handled = handle(target);
          } catch (error: unknown) {
            handled = Promise.reject(error);
          }
          handled.then(
            (answer) => {
              target.open.delete(reset);
              if (!target.alive) return;
              if (carriesReplies && (answer as SendResponse).messages.length > 0) this.repliesCarried++;
              this.host.at(this.delay(), () => {
                // The way back cut meanwhile: the answer is lost, and the deadline ends the call.
                if (this.isCut(to, from)) return void this.lost++;
                settle(() => resolve(answer));
              });
            },
            (error: unknown) => {
              target.open.delete(reset);
              if (!target.alive) return;
              this.host.at(this.delay(), () => settle(() => reject(ConnectError.from(error))));
            },
          );
        });
      });
    });
  }
}
