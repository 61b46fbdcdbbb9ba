// Proves parseJsonBody, the JSON reader of the client API's bodies (POST /txn, /leases, /members):
// it reads what JSON.parse reads, and refuses before parsing what would hold the node's loop
// (nesting past a bound, more values than any such body has) and a member name given twice, which
// JSON.parse would settle silently by taking the last.
import { expect, test } from "bun:test";
import { parseJsonBody } from "../src/http/json-body.ts";
import { KvError } from "../src/lib/kv-error.ts";

const enc = (text: string) => new TextEncoder().encode(text);
const refusal = (text: string, limits = { depthMax: 8, valuesMax: 100 }) => {
  try {
    parseJsonBody(enc(text), "the body", limits);
  } catch (error) {
    expect(error).toBeInstanceOf(KvError);
    expect((error as KvError).code).toBe("bad_request");
    return (error as KvError).message;
  }
  throw new Error(`not refused: ${text.slice(0, 80)}`);
};

test("reads what JSON.parse reads, brackets, quotes and escapes inside strings included", () => {
  const samples = [
    '{"compare":[],"success":[{"put":{"key":"k","value":"v"}}]}',
    '{"a":"[[[[{{{{\\"}}}}","b":"\\\\","c":[1,2,{"d":null}]}',
    ' { "x" : [ true , false , -1.5e3 ] , "y" : "\\u00e9\\ud83d\\ude00€" } ',
    '{"a":{"a":{"a":1}}}', // the same name in nested objects is not a repeat
    '{"":1,"\uFEFF":2}', // a name of U+FEFF is not the empty name (found in review)
    '{"x":1,"\uFEFFx":2}',
    '[]',
    '"text"',
  ];
  for (const text of samples) expect(parseJsonBody(enc(text), "the body", { depthMax: 8, valuesMax: 100 })).toEqual(JSON.parse(text));
});

test("nesting deeper than the bound is refused before parsing, whatever follows (a 2.4 MB body of brackets held the leader's loop past an election timeout: found in a black-box review)", () => {
  const deep = "[".repeat(1_200_000) + "]".repeat(1_200_000);
  expect(refusal(deep)).toBe("the body is nested deeper than 8 levels");
  expect(refusal('{"a":[[[[[[[[1]]]]]]]]}')).toBe("the body is nested deeper than 8 levels");
  expect(parseJsonBody(enc('{"a":[[[[[[[1]]]]]]]}'), "the body", { depthMax: 8, valuesMax: 100 })).toEqual({ a: [[[[[[[1]]]]]]] });
});

test("more values than the bound are refused before parsing (a wide array did the same)", () => {
  const wide = `[1${",1".repeat(1_200_000)}]`;
  expect(refusal(wide)).toBe("the body holds more than 100 values");
  expect(refusal(`[${Array.from({ length: 101 }, () => '"x"').join(",")}]`)).toBe("the body holds more than 100 values");
  expect(parseJsonBody(enc(`[${Array.from({ length: 99 }, () => '"x"').join(",")}]`), "the body", { depthMax: 8, valuesMax: 100 })).toHaveLength(99);
});

test("a member name given twice in one object is refused, escaped or not (JSON.parse keeps the last: a transaction's first 'success' was dropped)", () => {
  expect(refusal('{"success":[1],"success":[2]}')).toBe("the body gives 'success' twice in one object");
  expect(refusal('{"ttlMs":1000,"ttl\\u004ds":2000}')).toBe("the body gives 'ttlMs' twice in one object");
  expect(refusal('{"a":[{"put":{"key":"k","key":"j"}}]}')).toBe("the body gives 'key' twice in one object");
});

test("text that is not JSON, or not UTF-8, is refused as JSON.parse would refuse it", () => {
  for (const text of ['{"a":', "{a:1}", "[1,]", '{"a":"\\x"}', "", '"open']) expect(refusal(text)).toBe("the body is not JSON");
  expect(() => parseJsonBody(new Uint8Array([0x22, 0xff, 0x22]), "the body", { depthMax: 8, valuesMax: 100 })).toThrow("the body is not JSON");
});
