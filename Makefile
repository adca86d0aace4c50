# kpool — see README.md. `make test` is what CI runs (via .ci/run).
GO      ?= go
PKGS    := ./...
FUZZTIME ?= 20s
# pinned; `go run pkg@version` fetches it through the module proxy on a fresh machine
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build run test fmt-check vet unit race fuzz fuzz-short bench generate tidy-check staticcheck bench-e2e bench-stall

all: build

# bin/worker: the command (a plain `go build ./cmd/worker` at the root would clash with the worker/ package)
build:
	$(GO) build ./...
	$(GO) build -o bin/worker ./cmd/worker

# run the worker on its embedded defaults (NATS on 127.0.0.1:4222, data under ./data).
# The shell execs the binary (not `go run`, which swallows a SIGINT sent to its own pid
# and exits 1 whatever the worker did), so the worker gets the signals and its exit
# status is make's.
run:
	$(GO) build -o bin/worker ./cmd/worker
	exec ./bin/worker run $(ARGS)

# what CI runs: the plain pass runs the tests that skip under -race (an allocation test,
# the full-size property test); the race pass runs everything with the race detector
test: fmt-check vet tidy-check staticcheck unit race fuzz-short

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

unit:
	$(GO) test -timeout 20m $(PKGS)

staticcheck:
	$(GO) run $(STATICCHECK) $(PKGS)

race:
	$(GO) test -race -timeout 20m $(PKGS)

# bounded fuzzing of the MLS decoders, the event envelope and the API requests; `make fuzz FUZZTIME=5m` for longer
fuzz:
	$(GO) test ./mls -run '^$$' -fuzz '^FuzzDecodeKeyPackage$$' -fuzztime $(FUZZTIME)
	$(GO) test ./mls -run '^$$' -fuzz '^FuzzDecodeMLSMessage$$' -fuzztime $(FUZZTIME)
	$(GO) test ./mls -run '^$$' -fuzz '^FuzzPQKeys$$' -fuzztime $(FUZZTIME)
	$(GO) test ./events -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME)
	$(GO) test ./events/natsbus -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME)

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=5s

# the benchmarks on a 1 000 000-KeyPackage database need KPOOL_BENCH_BIG=1 (docs/benchmarks.md)
bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# regenerate the state diagram from the fsm table; golden files have their own -rewrite
# flags (go test ./pool -run TestScenarios -rewrite, go test ./replay -rewrite)
generate:
	$(GO) test ./fsm -run TestStateDiagram -rewrite

tidy-check:
	$(GO) mod tidy -diff

# end-to-end figures of the worker against bare JetStream and bbolt in the same run
# (docs/benchmarks.md); `make bench-e2e QUICK=1` for the short run
bench-e2e:
	$(GO) run ./cmd/bench-e2e $(if $(QUICK),-quick,)

# the issue's no-stall figure: 10 minutes of steady claims, the longest time the worker
# applied nothing while events waited (docs/benchmarks.md); STALL=2m for a shorter run
bench-stall:
	$(GO) run ./cmd/bench-e2e -only stall -stall $(or $(STALL),10m)

# the long crash soak (docs/operations.md#crash-behaviour-tested): 500 SIGKILLs and 20 NATS
# restarts under load, then the full audit. KPOOL_SOAK_KILLS, KPOOL_SOAK_RESTARTS and
# KPOOL_SOAK_SEED change it; CI runs the bounded TestKillLoop and TestNATSRestartsUnderLoad.
.PHONY: soak
soak:
	KPOOL_SOAK=1 $(GO) test ./worker -run '^TestSoak$$' -count=1 -v -timeout 2h

# the scale-out benchmark of issue 14 (docs/benchmarks.md, "Scale-out"): claims per second
# with 1, 2 and 3 workers and bare JetStream on one in-process three-node R3 cluster, then
# the failover time with the default lease TTL; prints both tables (≈ 4 min, more when
# the machine is loaded)
.PHONY: bench-cluster
bench-cluster:
	$(GO) test ./worker -run '^TestClusterBench$$' -cluster-bench -count=1 -v -timeout 10m
