// Defaults of `kv serve` that matter in containers: the id a StatefulSet pod takes from its hostname,
// and the addresses a node listens on and advertises when its peer URL is a DNS name.
import { isIP } from "node:net";
import { UsageError } from "./usage-error.ts";

/** The largest id `--id` takes; an ordinal must stay below it. */
const NODE_ID_MAX = 1_000_000;

/**
 * `--id-from-hostname`: the StatefulSet ordinal + 1, read from the hostname's first label, which
 * ends in `-N` (`kv-0` is node 1, `kv-2.kv.default.svc.cluster.local` node 3). A hostname without
 * such an ordinal is a usage error naming it.
 */
export function idFromHostname(hostname: string): number {
  const label = hostname.split(".")[0] ?? "";
  // A StatefulSet writes the ordinal in decimal without leading zeros.
  const match = /-(0|[1-9]\d{0,6})$/.exec(label);
  const id = match === null ? NaN : Number(match[1]) + 1;
  if (!(id >= 1 && id <= NODE_ID_MAX)) {
    throw new UsageError(
      `--id-from-hostname: the hostname '${hostname}' does not end in a StatefulSet ordinal such as kv-0 (ordinal 0 to ${NODE_ID_MAX - 1}); give --id instead`,
    );
  }
  return id;
}

/**
 * The default `--listen-peer` from this node's own `--cluster` URL: an IP address or `localhost` is
 * listened on as given (the local cluster stays on loopback); any other name is a DNS name that
 * other machines resolve to this one (a container's service or pod name), so the node listens on
 * every interface (0.0.0.0) at that port rather than on whatever the name resolves to here.
 */
export function defaultListenPeer(selfPeerUrl: string): string {
  const url = new URL(selfPeerUrl);
  const port = url.port === "" ? (url.protocol === "https:" ? "443" : "80") : url.port;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  if (isIP(host) !== 0 || host === "localhost") return `${url.hostname}:${port}`;
  return `0.0.0.0:${port}`;
}

/**
 * The default `--advertise-http` when `--listen-http` is a wildcard (0.0.0.0 or ::), which no client
 * can be sent to: this node's peer host (the name peers reach it by) with the HTTP port. Undefined
 * when the listen address is specific or its port is left to the OS (the server's own default then).
 */
export function defaultAdvertiseHttp(listenHttp: { readonly hostname: string; readonly port: number }, selfPeerUrl: string, scheme: "http" | "https"): string | undefined {
  if (listenHttp.port === 0 || (listenHttp.hostname !== "0.0.0.0" && listenHttp.hostname !== "::")) return undefined;
  return `${scheme}://${new URL(selfPeerUrl).hostname}:${listenHttp.port}`;
}

/** The hostname `--id-from-hostname` reads: `$KV_HOSTNAME` when set (for tests), else the system's. */
export function hostnameForId(env: Readonly<Record<string, string | undefined>>, systemHostname: () => string): string {
  const override = env.KV_HOSTNAME;
  return override === undefined || override === "" ? systemHostname() : override;
}

/** The default `--listen-http`: loopback at 8000 + id (the local cluster's 8001-8003); undefined past the last port. */
export function defaultListenHttp(id: number): string | undefined {
  return 8000 + id <= 65_535 ? `127.0.0.1:${8000 + id}` : undefined;
}

/** Whether `host` (a URL's hostname) names this machine only: `localhost`, 127.0.0.0/8 or ::1. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "").toLowerCase();
  return bare === "localhost" || bare === "::1" || (isIP(bare) === 4 && bare.startsWith("127."));
}

/**
 * What to say at start when the client port was left at its loopback default while the peers reach
 * this node at another host (found in a review: a cluster restored as docs/operations.md showed,
 * on 10.0.0.x, served clients on 127.0.0.1 only, and its followers sent clients to 127.0.0.1).
 */
export function loopbackHttpWarning(selfPeerUrl: string, listenHttp: { readonly hostname: string; readonly port: number }): string | undefined {
  const peerHost = new URL(selfPeerUrl).hostname;
  if (isLoopbackHost(peerHost) || !isLoopbackHost(listenHttp.hostname)) return undefined;
  return (
    `the client API listens on ${listenHttp.hostname}:${listenHttp.port} (the default), which only this machine reaches, while the peers reach this node at ${peerHost}; ` +
    `clients elsewhere cannot connect, and the others redirect writes to this address: give --listen-http 0.0.0.0:${listenHttp.port} (advertised as ${peerHost}:${listenHttp.port}) or --listen-http and --advertise-http of your own`
  );
}
