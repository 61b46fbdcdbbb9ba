# kv as a container image: one node per container, the executable alone on a small glibc base.
#
#   docker build -t kv:0.11.0 .
#   docker run --rm -p 127.0.0.1:8001:8001 -v kv-data:/data kv:0.11.0          # a one-node cluster
#   docker compose -f deploy/compose.yaml up                                   # the classic three nodes
#
# Kubernetes: deploy/kubernetes/ (a StatefulSet of three, `kv serve --id-from-hostname`).

# Stage 1: build dist/kv (bun build --compile, see build.ts) on Bun's Debian image, which has the
# glibc the executable links against.
FROM oven/bun:1.4.5 AS build
WORKDIR /src
COPY package.json bun.lock bunfig.toml ./
RUN bun install --frozen-lockfile
COPY tsconfig.json build.ts ./
COPY src ./src
RUN bun run build \
 && mkdir -p /out/data \
 && cp dist/kv /out/kv \
 && /out/kv --version

# Stage 2: only the executable. distroless/base has glibc (libc, libpthread, libdl, libm: all that
# `ldd dist/kv` lists), CA certificates and the non-root user 65532, and no shell or package manager.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/kv /kv
# The data dir belongs to the non-root user; a named volume mounted here starts with this owner.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
VOLUME ["/data"]
# One node per container: 5001 is the peer (Raft) port, 8001 the client HTTP API.
EXPOSE 5001 8001
# The image has no curl: `kv health` exits 0 when GET /health answers 200 (a leader is known and
# everything committed is applied), 1 otherwise. A node that serves elsewhere than 8001 overrides
# this (deploy/compose.yaml does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/kv", "health", "--endpoint", "http://127.0.0.1:8001", "--timeout-ms", "4000"]
# SIGTERM (docker stop) hands leadership over and drains for up to 3 s before exiting: give the
# container more than that to stop (docker stop -t 30, or stop_grace_period in compose).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/kv"]
# Without arguments: a one-node cluster whose client API every interface reaches. Give `serve`
# flags (or any other kv command) after the image name to replace this.
CMD ["serve", "--id", "1", "--cluster", "1=http://127.0.0.1:5001", "--listen-http", "0.0.0.0:8001", "--data-dir", "/data"]
