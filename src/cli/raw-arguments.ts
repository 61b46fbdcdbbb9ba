import { readFileSync } from "node:fs";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The positions (1: the first after the command's name) and lossy text of the last `count` words of
 * this process's command line that are not valid UTF-8, read raw from /proc/self/cmdline:
 * `process.argv` has them already decoded, each bad byte turned into U+FFFD, so `kv put $'a\xff' x`
 * and `kv put $'a\xfe' y` would write one key, `a�` (found in a black-box review). Only the user's
 * own words are looked at (the program's path, and bun's and the script's from source, may be any
 * bytes). Empty where /proc is not there to ask.
 */
export function argumentsNotUtf8(count: number, cmdline = "/proc/self/cmdline"): { readonly position: number; readonly text: string }[] {
  let raw: Buffer;
  try {
    raw = readFileSync(cmdline);
  } catch {
    return [];
  }
  const words: Buffer[] = [];
  for (let start = 0; start < raw.byteLength; ) {
    let end = raw.indexOf(0, start);
    if (end === -1) end = raw.byteLength;
    words.push(raw.subarray(start, end));
    start = end + 1;
  }
  const found: { position: number; text: string }[] = [];
  words.slice(Math.max(0, words.length - count)).forEach((word, at) => {
    try {
      utf8.decode(word);
    } catch {
      found.push({ position: at + 1, text: new TextDecoder().decode(word) });
    }
  });
  return found;
}
