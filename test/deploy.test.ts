// Proves what can be proved here of the deployment files (no container runs on this machine): the
// YAML parses, every flag the Dockerfile, deploy/compose.yaml and deploy/kubernetes/ pass to `kv`
// exists in that command's --help of the built executable, and their ports, paths, ids and peer
// names agree with one another. `--id-from-hostname` itself is proved in test/serve-hostname.test.ts.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parse, parseAllDocuments } from "yaml";
import { kvCommand } from "./helpers/kv-binary.ts";

const root = join(import.meta.dir, "..");
const kubernetesDir = join(root, "deploy", "kubernetes");

// ---- reading the files ----

/** One Dockerfile instruction, continuation lines joined, comments dropped. */
interface Instruction {
  readonly keyword: string;
  readonly rest: string;
}

function dockerfileInstructions(text: string): Instruction[] {
  const joined = text
    .split("\n")
    .filter((line) => !/^\s*#/.test(line))
    .join("\n")
    .replace(/\\\n/g, " ");
  return joined
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "")
    .map((line) => {
      const space = line.search(/\s/);
      return { keyword: line.slice(0, space).toUpperCase(), rest: line.slice(space).trim() };
    });
}

/** Instructions of the final stage (after the last FROM). */
function finalStage(instructions: Instruction[]): Instruction[] {
  const lastFrom = instructions.map((i) => i.keyword).lastIndexOf("FROM");
  return instructions.slice(lastFrom);
}

function only(instructions: Instruction[], keyword: string): Instruction {
  const found = instructions.filter((i) => i.keyword === keyword);
  expect(found).toHaveLength(1);
  return found[0] as Instruction;
}

/** A `kv` invocation found in a file: where, and the arguments after the executable. */
interface Invocation {
  readonly where: string;
  readonly args: readonly string[];
}

/** `--name=value` or `--name value`: the flags of an invocation, by name, with their values. */
function flagsOf(args: readonly string[]): Map<string, string | true> {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (!arg.startsWith("--")) continue;
    const eq = arg.indexOf("=");
    if (eq !== -1) flags.set(arg.slice(2, eq), arg.slice(eq + 1));
    else if (args[i + 1] !== undefined && !(args[i + 1] as string).startsWith("--")) flags.set(arg.slice(2), args[++i] as string);
    else flags.set(arg.slice(2), true);
  }
  return flags;
}

function flag(invocation: Invocation, name: string): string {
  const value = flagsOf(invocation.args).get(name);
  if (typeof value !== "string") throw new Error(`${invocation.where}: no --${name} value`);
  return value;
}

function portOf(hostPort: string): number {
  return Number(/:(\d+)$/.exec(hostPort)?.[1]);
}

function urlPort(url: string): number {
  return Number(new URL(url).port);
}

/** `1=http://a:5001,2=...` as [id, URL] pairs, in order. */
function clusterEntries(value: string): [number, string][] {
  return value.split(",").map((entry) => {
    const eq = entry.indexOf("=");
    return [Number(entry.slice(0, eq)), entry.slice(eq + 1)];
  });
}

const dockerfile = dockerfileInstructions(readFileSync(join(root, "Dockerfile"), "utf8"));
const compose = parse(readFileSync(join(root, "deploy", "compose.yaml"), "utf8"), { merge: true }) as ComposeFile;
const kubernetesFiles = readdirSync(kubernetesDir).filter((name) => name.endsWith(".yaml"));
const kubernetesObjects = kubernetesFiles.flatMap((name) =>
  parseAllDocuments(readFileSync(join(kubernetesDir, name), "utf8")).map((doc) => ({
    file: name,
    problems: [...doc.errors, ...doc.warnings].map((problem) => `${name}: ${problem.message}`),
    object: doc.toJSON() as KubeObject,
  })),
);

interface ComposeService {
  image?: string;
  command?: string[];
  ports?: string[];
  volumes?: string[];
  healthcheck?: { test?: string[] };
  stop_grace_period?: string;
}
interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}
// The few fields of Kubernetes objects the checks read.
interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata?: { name: string; labels?: Record<string, string> };
  spec: Record<string, unknown>;
  resources?: string[];
}

function kube(kind: string, name?: string): KubeObject {
  const found = kubernetesObjects.filter(({ object }) => object.kind === kind && (name === undefined || object.metadata?.name === name));
  expect(found.length).toBe(1);
  return (found[0] as { object: KubeObject }).object;
}

interface Container {
  name: string;
  image: string;
  args: string[];
  ports: { name: string; containerPort: number }[];
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  volumeMounts: { name: string; mountPath: string }[];
  securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean };
}
interface StatefulSetSpec {
  serviceName: string;
  replicas: number;
  podManagementPolicy?: string;
  selector: { matchLabels: Record<string, string> };
  template: {
    metadata: { labels: Record<string, string> };
    spec: {
      terminationGracePeriodSeconds?: number;
      securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; fsGroup?: number };
      containers: Container[];
    };
  };
  volumeClaimTemplates: { metadata: { name: string } }[];
}

const statefulSet = kube("StatefulSet");
const stsSpec = statefulSet.spec as unknown as StatefulSetSpec;
const kvContainer = stsSpec.template.spec.containers.find((container) => container.name === "kv") as Container;

/** Every `kv` invocation in the three kinds of files. */
function invocations(): Invocation[] {
  const found: Invocation[] = [];
  const stage = finalStage(dockerfile);
  const entrypoint = JSON.parse(only(stage, "ENTRYPOINT").rest) as string[];
  expect(entrypoint).toEqual(["/kv"]);
  found.push({ where: "Dockerfile CMD", args: JSON.parse(only(stage, "CMD").rest) as string[] });
  const health = /\bCMD\s+(\[.*\])$/.exec(only(stage, "HEALTHCHECK").rest);
  const healthCommand = JSON.parse(health?.[1] ?? "null") as string[];
  expect(healthCommand[0]).toBe("/kv");
  found.push({ where: "Dockerfile HEALTHCHECK", args: healthCommand.slice(1) });
  for (const [name, service] of Object.entries(compose.services)) {
    found.push({ where: `compose ${name} command`, args: service.command ?? [] });
    const check = service.healthcheck?.test ?? [];
    expect(check.slice(0, 2)).toEqual(["CMD", "/kv"]);
    found.push({ where: `compose ${name} healthcheck`, args: check.slice(2) });
  }
  found.push({ where: "kubernetes statefulset args", args: kvContainer.args });
  return found;
}

// ---- the checks ----

const helpCache = new Map<string, Set<string>>();
/** The flags `kv <command> --help` of the built executable lists. */
function helpFlags(command: string): Set<string> {
  const cached = helpCache.get(command);
  if (cached !== undefined) return cached;
  const proc = Bun.spawnSync([...kvCommand(), command, "--help"], { stdout: "pipe", stderr: "pipe", stdin: "ignore", timeout: 30_000 });
  expect(proc.exitCode).toBe(0);
  const out = proc.stdout.toString();
  // An option line starts with its flag (`  --id=<N>    This node's id ...`); descriptions that
  // mention other flags do not count.
  const flags = new Set([...out.matchAll(/^\s*--([a-z][a-z0-9-]*)(?:=<[^>]*>)?\s/gm)].map((match) => match[1] as string));
  expect(flags.size).toBeGreaterThan(0);
  helpCache.set(command, flags);
  return flags;
}

describe("the files parse", () => {
  test("compose.yaml and every Kubernetes manifest are YAML with the expected objects", () => {
    expect(Object.keys(compose.services).sort()).toEqual(["kv1", "kv2", "kv3"]);
    expect(kubernetesObjects.flatMap(({ problems }) => problems)).toEqual([]);
    expect(kubernetesObjects.map(({ object }) => `${object.kind}/${object.metadata?.name ?? ""}`).sort()).toEqual([
      "Kustomization/",
      "NetworkPolicy/kv",
      "PodDisruptionBudget/kv",
      "Service/kv",
      "Service/kv-client",
      "StatefulSet/kv",
    ]);
  });

  test("kustomization.yaml lists every other manifest in the folder", () => {
    const kustomization = kubernetesObjects.find(({ object }) => object.kind === "Kustomization")?.object;
    expect([...(kustomization?.resources ?? [])].sort()).toEqual(kubernetesFiles.filter((name) => name !== "kustomization.yaml").sort());
  });
});

describe("every flag passed to kv exists", () => {
  test("in `kv <command> --help` of the built executable", () => {
    const all = invocations();
    expect(all.length).toBe(2 + 2 * 3 + 1);
    const unknown: string[] = [];
    for (const invocation of all) {
      const command = invocation.args[0] as string;
      expect(["serve", "health"]).toContain(command);
      for (const name of flagsOf(invocation.args.slice(1)).keys()) {
        if (!helpFlags(command).has(name)) unknown.push(`${invocation.where}: --${name}`);
      }
    }
    expect(unknown).toEqual([]);
    // The parse is not vacuous: the flags the deployment depends on are seen.
    expect(helpFlags("serve").has("id-from-hostname")).toBe(true);
    expect(helpFlags("health").has("endpoint")).toBe(true);
  });
});

describe("Dockerfile", () => {
  const stage = finalStage(dockerfile);

  test("multi-stage: the final image copies only the executable (and its empty data dir) from the build", () => {
    expect(dockerfile.filter((i) => i.keyword === "FROM").length).toBeGreaterThanOrEqual(2);
    expect(dockerfile.some((i) => i.keyword === "RUN" && i.rest.includes("bun install --frozen-lockfile"))).toBe(true);
    expect(dockerfile.some((i) => i.keyword === "RUN" && i.rest.includes("bun run build"))).toBe(true);
    const copies = stage.filter((i) => i.keyword === "COPY" || i.keyword === "ADD");
    expect(copies.map((i) => i.rest.replace(/--chown=\S+\s+/, ""))).toEqual(["--from=build /out/kv /kv", "--from=build /out/data /data"]);
    expect(stage.some((i) => i.keyword === "RUN")).toBe(false);
  });

  test("runs as a non-root user, keeps data in /data, exposes the node's ports and checks /health there", () => {
    const user = only(stage, "USER").rest;
    expect(user).not.toMatch(/^(0|root)(:|$)/);
    expect(JSON.parse(only(stage, "VOLUME").rest)).toEqual(["/data"]);
    const cmd = { where: "CMD", args: JSON.parse(only(stage, "CMD").rest) as string[] };
    expect(flag(cmd, "data-dir")).toBe("/data");
    const httpPort = portOf(flag(cmd, "listen-http"));
    const peerPort = urlPort(clusterEntries(flag(cmd, "cluster"))[0]?.[1] as string);
    expect(only(stage, "EXPOSE").rest.split(/\s+/).map(Number).sort()).toEqual([peerPort, httpPort].sort());
    const health = invocations().find((i) => i.where === "Dockerfile HEALTHCHECK") as Invocation;
    expect(urlPort(flag(health, "endpoint"))).toBe(httpPort);
  });
});

describe("deploy/compose.yaml", () => {
  const services = Object.entries(compose.services).map(([name, service]) => ({
    name,
    service,
    serve: { where: `compose ${name}`, args: service.command ?? [] },
  }));

  test("the classic layout: node N is service kvN, peer port 500N, HTTP port 800N published on loopback", () => {
    for (const { name, service, serve } of services) {
      const id = Number(flag(serve, "id"));
      expect(name).toBe(`kv${id}`);
      expect(portOf(flag(serve, "listen-http"))).toBe(8000 + id);
      expect(flag(serve, "advertise-http")).toBe(`http://127.0.0.1:${8000 + id}`);
      expect(service.ports).toEqual([`127.0.0.1:${8000 + id}:${8000 + id}`]);
      const check = { where: `${name} healthcheck`, args: (service.healthcheck?.test ?? []).slice(2) };
      expect(urlPort(flag(check, "endpoint"))).toBe(8000 + id);
    }
  });

  test("every node has the same --cluster, naming each service by its DNS name", () => {
    const clusters = new Set(services.map(({ serve }) => flag(serve, "cluster")));
    expect(clusters.size).toBe(1);
    const entries = clusterEntries([...clusters][0] as string);
    expect(entries).toEqual(services.map((_, i) => [i + 1, `http://kv${i + 1}:${5001 + i}`]));
    for (const [, url] of entries) expect(Object.keys(compose.services)).toContain(new URL(url).hostname);
  });

  test("each node keeps --data-dir on its own named volume, stops with time for the hand-over, from one image", () => {
    const volumes = new Set<string>();
    for (const { service, serve } of services) {
      const dataDir = flag(serve, "data-dir");
      const mounts = (service.volumes ?? []).map((mount) => mount.split(":"));
      const mount = mounts.find(([, target]) => target === dataDir);
      expect(mount).toBeDefined();
      const volume = (mount as string[])[0] as string;
      expect(Object.keys(compose.volumes ?? {})).toContain(volume);
      volumes.add(volume);
      expect(Number.parseInt(service.stop_grace_period ?? "10s", 10)).toBeGreaterThanOrEqual(10);
    }
    expect(volumes.size).toBe(services.length);
    expect(new Set(services.map(({ service }) => service.image)).size).toBe(1);
  });
});

describe("deploy/kubernetes", () => {
  const serve: Invocation = { where: "statefulset", args: kvContainer.args };
  const portsByName = new Map(kvContainer.ports.map((port) => [port.name, port.containerPort]));

  test("a StatefulSet of 3 with ids from hostnames and --cluster naming kv-N.<headless service>", () => {
    expect(stsSpec.replicas).toBe(3);
    expect(flagsOf(serve.args).get("id-from-hostname")).toBe(true);
    expect(flagsOf(serve.args).has("id")).toBe(false);
    // Parallel: no pod is ready before a majority runs, so OrderedReady would never start kv-1.
    expect(stsSpec.podManagementPolicy).toBe("Parallel");
    const entries = clusterEntries(flag(serve, "cluster"));
    expect(entries).toEqual(
      Array.from({ length: stsSpec.replicas }, (_, ordinal) => [ordinal + 1, `http://${statefulSet.metadata?.name}-${ordinal}.${stsSpec.serviceName}:${portsByName.get("peer")}`]),
    );
    expect(portOf(flag(serve, "listen-http"))).toBe(portsByName.get("http") as number);
    expect(flag(serve, "listen-http").startsWith("0.0.0.0:")).toBe(true);
  });

  test("the headless Service publishes not-ready pods; both Services target the container's named ports", () => {
    const headless = kube("Service", stsSpec.serviceName).spec as { clusterIP?: string; publishNotReadyAddresses?: boolean; selector: Record<string, string>; ports: { targetPort: string; port: number }[] };
    expect(headless.clusterIP).toBe("None");
    expect(headless.publishNotReadyAddresses).toBe(true);
    for (const service of kubernetesObjects.filter(({ object }) => object.kind === "Service").map(({ object }) => object.spec as typeof headless)) {
      expect(service.selector).toEqual(stsSpec.template.metadata.labels);
      for (const port of service.ports) {
        expect(portsByName.has(port.targetPort)).toBe(true);
        expect(port.port).toBe(portsByName.get(port.targetPort) as number);
      }
    }
  });

  test("readiness on /health, liveness on a route that answers without a leader, both on the HTTP port", () => {
    expect(kvContainer.readinessProbe?.httpGet).toEqual({ path: "/health", port: "http" });
    expect(kvContainer.livenessProbe?.httpGet).toEqual({ path: "/status", port: "http" });
  });

  test("grace period for the SIGTERM hand-over, data on the claim template at --data-dir, non-root", () => {
    // stopServing: a leadership transfer (an election timeout or so) plus at most 3 s of draining.
    expect(stsSpec.template.spec.terminationGracePeriodSeconds ?? 30).toBeGreaterThanOrEqual(10);
    const claim = stsSpec.volumeClaimTemplates[0]?.metadata.name;
    const mount = kvContainer.volumeMounts.find((volumeMount) => volumeMount.name === claim);
    expect(mount?.mountPath).toBe(flag(serve, "data-dir"));
    const pod = stsSpec.template.spec.securityContext;
    expect(pod?.runAsNonRoot).toBe(true);
    expect(pod?.runAsUser).not.toBe(0);
    expect(pod?.fsGroup).toBe(pod?.runAsUser as number);
    expect(kvContainer.securityContext?.allowPrivilegeEscalation).toBe(false);
    // The Dockerfile's user is the same one.
    expect(only(finalStage(dockerfile), "USER").rest).toBe(`${pod?.runAsUser}:${pod?.runAsUser}`);
  });

  test("the NetworkPolicy lets only kv's pods reach the peer port, and anyone the client port, by the StatefulSet's port names", () => {
    const policy = kube("NetworkPolicy").spec as {
      podSelector: { matchLabels: Record<string, string> };
      policyTypes: string[];
      ingress: { from?: { podSelector: { matchLabels: Record<string, string> } }[]; ports: { port: string }[] }[];
    };
    expect(policy.podSelector.matchLabels).toEqual(stsSpec.selector.matchLabels);
    expect(policy.policyTypes).toEqual(["Ingress"]);
    const containerPorts = (stsSpec.template.spec.containers[0] as { ports: { name: string }[] }).ports.map((port) => port.name).sort();
    expect(policy.ingress.flatMap((rule) => rule.ports.map((port) => port.port)).sort()).toEqual(containerPorts);
    const peerRule = policy.ingress.find((rule) => rule.ports.some((port) => port.port === "peer"));
    expect(peerRule?.from).toEqual([{ podSelector: { matchLabels: stsSpec.selector.matchLabels } }]);
    expect(policy.ingress.find((rule) => rule.ports.some((port) => port.port === "http"))?.from).toBeUndefined();
  });

  test("the PodDisruptionBudget allows one node down and selects the StatefulSet's pods", () => {
    const pdb = kube("PodDisruptionBudget").spec as { maxUnavailable: number; selector: { matchLabels: Record<string, string> } };
    expect(pdb.maxUnavailable).toBe(1);
    expect(pdb.selector.matchLabels).toEqual(stsSpec.selector.matchLabels);
  });
});
