# cachegroup: build, test and try the CSI driver.
#
#   make demo     a single-member cache group on this machine, two build pods
#   make test     lint, every test (as root: real mounts), brief fuzzing
#   make sanity   csi-sanity conformance only
#   make e2e      several members in network namespaces, real mounts
#   make e2e-k8s  the driver on a real single-node Kubernetes
#   make bench    the benchmark against the raw local disk
#   make soak     a cache group under CI churn for 10-15 minutes (SOAK_SHORT=1: 2)

GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --tags --always 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/cachegroup/cachegroup/pkg/driver.Version=$(VERSION)
CTLFLAGS  := -X main.version=$(VERSION)
# Each fuzz target runs this long in `make test`.
FUZZTIME  ?= 10s
# Bounds each test binary; `make test` stays well under 15 minutes.
TESTTIMEOUT ?= 10m

.PHONY: all build test unit fuzz sanity e2e e2e-k8s image demo bench soak lint clean need-root

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cachegroup-csi ./cmd/cachegroup-csi
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cachegroup-demo ./cmd/cachegroup-demo
	$(GO) build -ldflags '$(CTLFLAGS)' -o $(BIN)/cachegroupctl ./cmd/cachegroupctl
	# The same tool as a kubectl plugin (krew naming): `kubectl cachegroup`.
	$(GO) build -ldflags '$(CTLFLAGS)' -o $(BIN)/kubectl-cachegroup ./cmd/cachegroupctl

# Lint first (cheap), then brief fuzzing, then every test, one after the
# other even under -j; the last lines are go test's own summary, which CI reads.
test: lint
	@$(MAKE) --no-print-directory fuzz
	@$(MAKE) --no-print-directory unit

unit: need-root
	$(GO) test -count=1 -timeout=$(TESTTIMEOUT) ./...

# Every Go fuzz target in the repository, found by name so new ones are
# picked up, each run for FUZZTIME in its own package (go test -fuzz takes one
# package and one target at a time). Any failure fails, except the one the
# Go 1.26 fuzzing coordinator itself produces under CPU load: a bare "context
# deadline exceeded" at the end of -fuzztime with no failing input found
# (go.dev/issue/75804, fixed in Go 1.27), which is reported as a warning.
fuzz:
	@set -e; out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	for file in $$(grep -rlE --include='*_test.go' --exclude-dir=.git --exclude-dir=testdata --exclude-dir=$(BIN) '^func Fuzz[A-Za-z0-9_]*\(' .); do \
		pkg=./$$(dirname $${file#./}); \
		for target in $$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/p' $$file); do \
			echo "fuzz $$target in $$pkg for $(FUZZTIME)"; \
			rc=0; $(GO) test -run='^$$' -fuzz="^$$target\$$" -fuzztime=$(FUZZTIME) $$pkg >$$out 2>&1 || rc=$$?; \
			cat $$out; \
			if [ $$rc -ne 0 ]; then \
				if grep -qx '    context deadline exceeded' $$out && ! grep -q 'Failing input written to' $$out && \
				   ! grep -q -- "--- FAIL: $$target/" $$out; then \
					echo "warning: $$target: Go's fuzzing coordinator hit its own deadline, no failing input (go.dev/issue/75804)"; \
				else exit $$rc; fi; \
			fi; \
		done; \
	done

sanity: need-root
	$(GO) test -count=1 -v ./test/sanity

# Several members on this machine, each in its own network namespace.
e2e: need-root
	$(GO) test -count=1 -v -timeout=10m ./test/e2e

# The driver on a real single-node Kubernetes built on this machine; see
# test/e2e-k8s/README.md. Cold (Kubernetes built from source) about 20 minutes.
e2e-k8s: need-root
	bash test/e2e-k8s/run.sh

# The driver's image: with a container engine from the Dockerfile, otherwise
# the same image as an OCI archive at bin/cachegroup-csi.oci.tar.
IMAGE ?= ghcr.io/cachegroup/cachegroup-csi:$(VERSION)
image:
	@if docker info >/dev/null 2>&1; then \
		docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) . ; \
	else \
		mkdir -p $(BIN) && bash test/e2e-k8s/images/driver-image.sh $(BIN)/cachegroup-csi.oci.tar $(IMAGE) $(VERSION); \
	fi

demo: need-root build
	./$(BIN)/cachegroup-demo -driver ./$(BIN)/cachegroup-csi

bench: need-root build
	$(GO) run ./test/bench -driver ./$(BIN)/cachegroup-csi

# Three members and two client-only nodes under hundreds of builds, checked
# against a model; report, CSV files and plots in bin/soak. Not part of
# `make test`. SOAK_SHORT=1 makes it a two-minute run; SOAKFLAGS passes
# flags (go run ./test/soak -h lists them). It exits non-zero only for a
# correctness failure: wrong bytes, a commit retried forever, a dead process.
soak: need-root build
	$(GO) build -o $(BIN)/cachegroup-soak ./test/soak
	./$(BIN)/cachegroup-soak -driver ./$(BIN)/cachegroup-csi -out $(BIN)/soak $(SOAKFLAGS)

lint:
	$(GO) vet ./...
	@files=$$(find . -name '*.go' -not -path './.git/*' -not -path './$(BIN)/*' -exec gofmt -l {} +); \
	if [ -n "$$files" ]; then echo "not gofmt-ed (run gofmt -w):"; echo "$$files"; exit 1; fi

clean:
	rm -rf $(BIN)

# The driver mounts overlays and binds for real: tests, demo and bench need root.
need-root:
	@if [ "$$(id -u)" != 0 ]; then echo "this target mounts file systems: run it as root (sudo make $(MAKECMDGOALS))" >&2; exit 1; fi
