# Two commands matter: `make run` and `make test`. The rest are their parts.
SHELL := /bin/bash
CARGO ?= cargo
SERVICES := -p order-service -p stock-service -p payment-service -p gateway-sim
# nextest runs every test in its own process with timeouts; plain cargo test works too.
TEST_RUNNER := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "nextest run" || echo test)

.PHONY: run test deps deps-runtime release build fmt fmt-check lint unit e2e bench script-cost chaos clean

## run: build release binaries, install redis-server/nginx if missing, start the stack (Ctrl-C stops)
run: deps-runtime release
	scripts/run.sh

## test: format check, clippy, unit tests, then the e2e suite against real Redis and nginx
test: deps fmt-check lint unit e2e

# Everything make test needs (redis-server, nginx, schemathesis in .venv); make run, bench and
# chaos need only the first two.
deps:
	scripts/deps.sh

deps-runtime:
	DEPS_SKIP_PYTHON=1 scripts/deps.sh

release:
	$(CARGO) build --release --locked $(SERVICES)

build:
	$(CARGO) build --workspace --locked

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) $(TEST_RUNNER) --workspace --exclude tests-e2e --locked

# The e2e tests start the debug service binaries, so those are built first. The contract
# suites run a second time on a three-master Redis Cluster.
e2e: build
	$(CARGO) $(TEST_RUNNER) -p tests-e2e --locked
	E2E_REDIS_CLUSTER=1 $(CARGO) $(TEST_RUNNER) -p tests-e2e --locked --test checkout --test stock --test payment --test gateways --test wallets --test splits --test rate_limits --test pix --test merchant_webhooks

## bench: release build, then the checkout against this machine's ceiling (see scripts/bench.sh)
bench: deps-runtime
	$(CARGO) build --release --locked $(SERVICES) -p bench
	scripts/bench.sh

## script-cost: release build, then each checkout script's time replayed on an idle Redis
## (scripts/script-cost.sh; give it BIN_DIRS="old/target/release target/release" for an A/B)
script-cost: deps-runtime
	$(CARGO) build --release --locked $(SERVICES) -p bench
	scripts/script-cost.sh $(BIN_DIRS)

## chaos: release build, then kill -9 services and Redis at random under load and check the books
chaos: deps-runtime
	$(CARGO) build --release --locked $(SERVICES) -p bench
	scripts/chaos.sh

clean:
	$(CARGO) clean
	rm -rf .data
