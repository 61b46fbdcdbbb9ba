// Proves help output of the built executable has no ANSI colour unless it goes to a terminal, and
// none on a terminal either when NO_COLOR is set to anything but the empty string.
import { expect, test } from "bun:test";
import { kvCommand } from "./helpers/kv-binary.ts";

const ESC = "\x1b[";
/** A clean environment: citty itself turns colour off for CI, TEST or TERM=dumb, which would hide the bug. */
function env(extra: Record<string, string> = {}): Record<string, string> {
  const base: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && !["CI", "TEST", "NO_COLOR", "TERM"].includes(name)) base[name] = value;
  }
  return { ...base, TERM: "xterm-256color", ...extra };
}

test.each([[["serve", "--help"]], [["--help"]], [["chaos"]], [["member", "--help"]]])("kv %p piped (not a terminal) has no colour", (args) => {
  const proc = Bun.spawnSync([...kvCommand(), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: env(), timeout: 30_000 });
  expect(proc.exitCode).toBe(0);
  const out = proc.stdout.toString();
  expect(out).toContain("USAGE");
  expect(out).not.toContain(ESC);
});

// `script` runs the command on a pseudo-terminal, so stdout is a TTY as on an operator's screen.
const script = Bun.which("script");

test.skipIf(script === null)("on a terminal help is coloured, unless NO_COLOR is set (any non-empty value)", () => {
  const onTerminal = (extra: Record<string, string>) => {
    const command = [...kvCommand(), "serve", "--help"].map((part) => `'${part}'`).join(" ");
    const proc = Bun.spawnSync([script as string, "-qec", command, "/dev/null"], { stdout: "pipe", stderr: "pipe", stdin: "ignore", env: env(extra), timeout: 30_000 });
    expect(proc.exitCode).toBe(0);
    const out = proc.stdout.toString();
    expect(out).toContain("USAGE");
    return out;
  };
  expect(onTerminal({})).toContain(ESC);
  expect(onTerminal({ NO_COLOR: "" })).toContain(ESC);
  expect(onTerminal({ NO_COLOR: "1" })).not.toContain(ESC);
  expect(onTerminal({ NO_COLOR: "yes" })).not.toContain(ESC);
});
