# trams-serve on Debian 12, host backend (no CUDA in this image; Dockerfile.cuda is the GPU one).
#   docker build -t trams-serve:latest .
#   docker run --rm -p 50051:50051 -p 9464:9464 trams-serve:latest
# Extra server flags go after the image name and override the flag file, e.g. `... trams-serve:latest
# --flagfile=/etc/trams-serve/trams-server.flags --listen=0.0.0.0:50051 --max_sessions=64` (a CMD given
# on the command line replaces the whole CMD below, so repeat the flagfile and listen flags).
# Layout (the Kubernetes manifests rely on it): binaries in /usr/local/bin, the model in
# /usr/share/trams-serve/models, the flag file in /etc/trams-serve, user trams (uid/gid 10001).
# tests/deploy/packaging/dockerfile_test.py checks this file without a Docker engine.

# --- build: compilers and -dev packages live only in this stage --------------------------------------
FROM debian:12 AS build
# deploy/deps.sh's build packages (the test checks that none is missing here), less ccache.
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake ninja-build g++ pkg-config ca-certificates libxxhash-dev libzstd-dev libhiredis-dev libssl-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libabsl-dev prometheus-cpp-dev libblis-serial-dev nlohmann-json3-dev \
      libgtest-dev libgmock-dev libbenchmark-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Only the three programs: the tests are configured (the top CMakeLists finds GTest) but not built.
# -mavx2 -mfma is the project default, so the image needs an x86-64 CPU with AVX2.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRAMS_WITH_CUDA=OFF \
    && cmake --build build --target trams-server trams-client trams-eval

# --- runtime: Debian's shared libraries the programs link, nothing else -----------------------------
FROM debian:12-slim
# The runtime libraries of the -dev packages above (the test maps `ldd` of the built programs to these
# packages, their dependencies and the base image's Priority: required packages).
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0 \
      libblis4-serial libhiredis0.14 libssl3 libzstd1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 trams \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin trams
# The build tree's RUNPATH (/usr/lib/x86_64-linux-gnu/blis-serial for libblis) stays valid here: the same
# Debian package puts the library at the same path.
COPY --from=build /src/build/server/trams-server /src/build/client/trams-client /src/build/engine/trams-eval \
     /usr/local/bin/
COPY models/trams-byte-books /usr/share/trams-serve/models/trams-byte-books
COPY deploy/trams-server.flags /etc/trams-serve/trams-server.flags
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 50051 9464
# grpc.health.v1 through the client: NOT_SERVING during a drain, so a draining container reads unhealthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/trams-client", "--server", "127.0.0.1:50051", "--timeout", "3s", "health"]
ENTRYPOINT ["/usr/local/bin/trams-server"]
# The flag file listens on 127.0.0.1 (right for the Debian package); a container must listen on every
# interface to be reached through its published ports. Later flags override the flag file's.
CMD ["--flagfile=/etc/trams-serve/trams-server.flags", "--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
