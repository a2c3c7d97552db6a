# syntax=docker/dockerfile:1
# The cachegroup CSI driver: one static binary on an empty base. The driver
# executes nothing else (mounts are system calls), so the image holds only it.
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

FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="cachegroup-csi" \
      org.opencontainers.image.source="https://github.com/cachegroup/cachegroup" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/cachegroup-csi /cachegroup-csi
# Runs as root: the node plugin mounts overlays into pods' volume directories.
ENTRYPOINT ["/cachegroup-csi"]
