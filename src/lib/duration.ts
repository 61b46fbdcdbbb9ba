const durationUnitsMs: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/**
 * Milliseconds in a duration such as `10m`, `90s`, `1h30m`, `500ms` or `1.5s` (units ms, s, m, h;
 * a unit is required), or undefined when the text is not one. The flags that take durations share it.
 */
export function parseDuration(text: string): number | undefined {
  const trimmed = text.trim();
  const part = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;
  let totalMs = 0;
  let position = 0;
  while (position < trimmed.length) {
    part.lastIndex = position;
    const match = part.exec(trimmed);
    if (match === null) break;
    totalMs += Number(match[1]) * (durationUnitsMs[match[2] as string] as number);
    position = part.lastIndex;
  }
  if (trimmed === "" || position !== trimmed.length) return undefined;
  return totalMs;
}
