# syntax=docker/dockerfile:1
# The cachegroup CSI driver: one static binary on an empty base, with the two
# programs it runs (mkfs.ext4 and e2fsck, from Debian's e2fsprogs: each pod's
# quota filesystem) and their libraries; mounts are system calls.
#
#   docker build -t ghcr.io/cachegroup/cachegroup-csi:v0.1.0 --build-arg VERSION=v0.1.0 .
#
# Without a container engine, test/e2e-k8s/images/driver-image.sh builds the same
# image as an OCI archive.
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY cmd ./cmd
COPY pkg ./pkg
COPY internal ./internal
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X github.com/cachegroup/cachegroup/pkg/driver.Version=${VERSION}" \
      -o /out/cachegroup-csi ./cmd/cachegroup-csi

# mkfs.ext4 and e2fsck of the target platform, with their libraries.
FROM debian:bookworm-slim AS tools
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends e2fsprogs && rm -rf /var/lib/apt/lists/*
COPY deploy/image-tools.sh /
RUN bash /image-tools.sh /out/root

FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="cachegroup-csi" \
      org.opencontainers.image.source="https://github.com/cachegroup/cachegroup" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=tools /out/root/ /
COPY --from=build /out/cachegroup-csi /cachegroup-csi
# Runs as root: the node plugin mounts overlays into pods' volume directories.
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/cachegroup-csi"]
