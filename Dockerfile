FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin vivace

FROM debian:bookworm-slim
COPY --from=build /src/target/release/vivace /usr/local/bin/vivace
EXPOSE 3200 4317 4318
ENTRYPOINT ["vivace"]
CMD ["serve"]
