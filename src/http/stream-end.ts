/** `body`, passed through chunk by chunk (nothing read ahead), calling `onEnd` once when it ends or is cancelled. */
export function untilStreamEnds(body: ReadableStream<Uint8Array>, onEnd: () => void): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        const chunk = await reader.read().catch((error: unknown) => {
          onEnd();
          throw error;
        });
        if (chunk.done) {
          onEnd();
          controller.close();
        } else {
          controller.enqueue(chunk.value);
        }
      },
      cancel(reason) {
        onEnd();
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}
