# The wasm-authz proxy-wasm module as an image: one layer holding only /plugin.wasm.
# Build from the workspace root:
#   docker build -f deploy/docker/wasm-authz.Dockerfile -t ward/wasm-authz .
FROM rust:1-bookworm AS builder
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build -p wasm-authz --target wasm32-wasip1 --release

FROM scratch
# `plugin.wasm`: the name Istio's WasmPlugin fetcher looks for in a single-layer image.
COPY --from=builder /src/target/wasm32-wasip1/release/wasm_authz.wasm /plugin.wasm
