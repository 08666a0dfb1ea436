# The lab: build, test, demo, bench. Every target installs what it needs on a fresh machine.
SHELL := /bin/bash
CONFIG ?= Release
BUILD := build
CC ?= cc
CFLAGS_C := -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE
DOTNET := DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1 dotnet

SHIM_SRC := $(wildcard lab/preload/*.c)
# Test programs: every tests/progs/*.c, built alike (statichello is static on purpose); and the bench programs.
TEST_PROGS := $(patsubst tests/progs/%.c,$(BUILD)/%,$(wildcard tests/progs/*.c))
PROGS := $(TEST_PROGS) $(BUILD)/touch $(BUILD)/uffd-floor $(BUILD)/swaptouch

.PHONY: all build deps native dotnet test demo bench clean props-long fsx-long soak

all: build

# Debian packages the lab uses at run time or in tests, installed only when missing.
APT_PKGS := fuse3 sqlite3 ripgrep git libjemalloc2
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }

native: $(BUILD)/liblabpreload.so $(BUILD)/liblabpreload-proto0.so $(PROGS)

# Hidden by default: only the interposed libc calls (LAB_EXPORT, lab/preload/shim.h) are exported.
$(BUILD)/liblabpreload.so: $(SHIM_SRC) $(wildcard lab/preload/*.h)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_C) -fPIC -shared -fvisibility=hidden -o $@ $(SHIM_SRC) -lpthread -ldl

# For a test only: a shim that speaks another protocol version, as a stale build would.
$(BUILD)/liblabpreload-proto0.so: $(SHIM_SRC) $(wildcard lab/preload/*.h)
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_C) -DLAB_PROTO_VERSION=0 -fPIC -shared -fvisibility=hidden -o $@ $(SHIM_SRC) -lpthread -ldl

$(BUILD)/%: tests/progs/%.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_C) $(if $(filter statichello,$*),-static) -o $@ $< -lpthread

$(BUILD)/swaptouch: lab/bench/swaptouch.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_C) -o $@ $<

$(BUILD)/touch: lab/bench/touch.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_C) -o $@ $<

$(BUILD)/uffd-floor: lab/bench/uffd-floor.c
	@mkdir -p $(BUILD)
	$(CC) $(CFLAGS_C) -o $@ $< -lpthread

dotnet:
	$(DOTNET) build Lab.sln -c $(CONFIG) -nologo -clp:ErrorsOnly -v:q

build: deps native dotnet
	@ln -sfn ../lab/bin/$(CONFIG)/net10.0/lab $(BUILD)/lab
	@echo "built: $(BUILD)/lab, $(BUILD)/liblabpreload.so"

# Runs every test project; the last line is the sum: "N passed, N failed".
test: build
	@bash lab/scripts/test.sh $(CONFIG)

demo: build
	@bash lab/scripts/demo.sh

# Every benchmark: page faults end to end, then the resolvers alone, the file system, the swap store, paging end to end.
bench: build
	@for b in bench bench-vm bench-fs bench-swap bench-pageout; do \
	  if [ -f lab/scripts/$$b.sh ]; then echo; echo "### $$b"; bash lab/scripts/$$b.sh || exit 1; fi; \
	done

# The long runs: 100,000 cases per property and design; 1,000,000 fsx operations.
props-long: build
	LAB_PROPS_LONG=1 $(DOTNET) test props/Props.csproj -c $(CONFIG) --no-build

fsx-long: build
	LAB_FSX_LONG=1 LAB_REQUIRE_KERNEL=1 $(DOTNET) test tests/Lab.Tests/Lab.Tests.csproj -c $(CONFIG) --no-build --filter FullyQualifiedName~Fsx

# Not in CI: real programs mixed for SOAK_MINUTES (default 30) under every design, the daemon's footprint sampled each minute.
soak: build
	@bash lab/scripts/soak.sh

clean:
	rm -rf $(BUILD)
	find . -name bin -o -name obj -type d | xargs rm -rf
