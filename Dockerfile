# trams-serve on Debian 12 (host backend). Build: docker build -t trams-serve .
# Run:   docker run -p 50051:50051 -p 9464:9464 trams-serve
FROM debian:12 AS build
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake ninja-build g++ pkg-config ca-certificates \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev prometheus-cpp-dev \
      libblis-serial-dev nlohmann-json3-dev libgtest-dev libgmock-dev libbenchmark-dev libxxhash-dev libzstd-dev \
      libhiredis-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRAMS_WITH_CUDA=OFF \
    && cmake --build build --target trams-server trams-client trams-eval

FROM debian:12
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0 \
      libblis4-serial libzstd1 libhiredis0.14 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/server/trams-server /src/build/client/trams-client /src/build/engine/trams-eval /usr/local/bin/
COPY --from=build /src/models /models
EXPOSE 50051 9464
ENTRYPOINT ["/usr/local/bin/trams-server", "--model", "/models/trams-byte-books", "--listen", "0.0.0.0:50051", \
            "--metrics_listen", "0.0.0.0:9464"]
