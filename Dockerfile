# syntax=docker/dockerfile:1
#
# osbuild-controller: a static (musl) release binary on distroless, non-root.
#
#   docker build -t ghcr.io/osbuild-controller/osbuild-controller:0.1.0 .
#   docker run --rm ghcr.io/osbuild-controller/osbuild-controller:0.1.0 explain 10.0.17763.3887
#
# The builder runs on the target platform and builds for `$(uname -m)-unknown-linux-musl`, so the same file
# builds linux/amd64 and linux/arm64 (`docker buildx --platform linux/amd64,linux/arm64`). rustls with the
# `ring` provider compiles its C and assembly with musl-gcc (Debian's musl-tools): no OpenSSL, no glibc,
# nothing dynamic, so the runtime image needs no libc at all.
#
# CI does not run this file (no daemon, no registry there): scripts/image builds the same image from scratch
# and tests/image.rs starts it with runc (docs/release.md).
#
# The runtime base is pinned by digest: the multi-arch index (linux/amd64, linux/arm64, ...) that
# gcr.io/distroless/static-debian12:nonroot pointed to in July 2026 (Renovate's digest update d093aa3 ->
# aef9602 in github.com/bug-ops/zeph pull request 6318). Refresh it with
# `crane digest gcr.io/distroless/static-debian12:nonroot` and update the date here.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot@sha256:aef9602f8710ec12bde19d593fed1f76c708531bb7aba205110f1029786ead7b

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY Cargo.toml Cargo.lock README.md ./
COPY src ./src
# Strip symbols (13 MB instead of 16 MB). The registry and target dir are BuildKit caches, so a rebuild
# after a source change recompiles only this crate. The binary leaves the cache through /out; `ldd` fails
# the build (not the pod) if anything made it dynamic.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --locked --target "$target" --bin osbuild-controller \
 && mkdir -p /out \
 && cp "target/$target/release/osbuild-controller" /out/osbuild-controller \
 && if ldd /out/osbuild-controller 2>&1 | grep -q '=>'; then ldd /out/osbuild-controller; exit 1; fi \
 && /out/osbuild-controller --version

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="osbuild-controller" \
      org.opencontainers.image.description="Labels Windows nodes by OS build and flags pods failing with the Windows container OS-version mismatch" \
      org.opencontainers.image.source="https://github.com/osbuild-controller/osbuild-controller" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/osbuild-controller /osbuild-controller
# distroless "nonroot" is uid/gid 65532, the same as runAsUser/runAsGroup in manifests/base/deployment.yaml.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/osbuild-controller"]
CMD ["run"]
