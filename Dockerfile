# The ringlimit node. Build: docker build -t ringlimit .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin ringlimit

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 ringlimit && mkdir /data && chown ringlimit /data
COPY --from=build /src/target/release/ringlimit /usr/local/bin/ringlimit
USER ringlimit
ENV RINGLIMIT_DATA_DIR=/data
EXPOSE 8080 8081 7946
ENTRYPOINT ["/usr/local/bin/ringlimit"]
