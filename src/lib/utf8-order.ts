/**
 * Key order as the state machine keeps it: UTF-8 byte order (SQLite's BINARY collation on TEXT),
 * which is code point order. JavaScript's `<` orders by UTF-16 code units, which differs for code
 * points past U+FFFF against U+E000-U+FFFF.
 */

const encoder = new TextEncoder();

/** Orders strings by their UTF-8 bytes: negative, zero or positive as `a` sorts before, with or after `b`. */
export function compareUtf8(a: string, b: string): number {
  return Buffer.compare(encoder.encode(a), encoder.encode(b));
}

/**
 * The first string past every key that starts with `prefix` in UTF-8 byte order (code point order):
 * the prefix with its last code point incremented, after dropping trailing U+10FFFF. Undefined when
 * there is none (the empty prefix, or only U+10FFFF) or the prefix ends in a lone surrogate.
 */
export function prefixUpperBound(prefix: string): string | undefined {
  const points = Array.from(prefix);
  while (points.length > 0) {
    const last = points.pop() as string;
    const code = last.codePointAt(0) as number;
    if (code >= 0xd800 && code <= 0xdfff) return undefined;
    if (code === 0x10ffff) continue;
    return points.join("") + String.fromCodePoint(code + 1 === 0xd800 ? 0xe000 : code + 1);
  }
  return undefined;
}
