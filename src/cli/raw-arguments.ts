import { readFileSync } from "node:fs";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The positions (0: the program) and lossy text of this process's arguments that are not valid
 * UTF-8, read raw from /proc/self/cmdline: `process.argv` has them already decoded, each bad byte
 * turned into U+FFFD, so `kv put $'a\xff' x` and `kv put $'a\xfe' y` would write one key, `a�`
 * (found in a black-box review). Empty where /proc is not there to ask.
 */
export function argumentsNotUtf8(cmdline = "/proc/self/cmdline"): { readonly position: number; readonly text: string }[] {
  let raw: Buffer;
  try {
    raw = readFileSync(cmdline);
  } catch {
    return [];
  }
  const found: { position: number; text: string }[] = [];
  let start = 0;
  for (let position = 0; start < raw.byteLength; position++) {
    let end = raw.indexOf(0, start);
    if (end === -1) end = raw.byteLength;
    const word = raw.subarray(start, end);
    try {
      utf8.decode(word);
    } catch {
      found.push({ position, text: new TextDecoder().decode(word) });
    }
    start = end + 1;
  }
  return found;
}
