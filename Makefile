# Entry points; `make help` lists them, README.md explains them. Targets marked (root) mount
# filesystems or attach devices.
PREFIX ?= /usr/local
SBINDIR ?= /sbin
SWIFT ?= swift
SWIFT_FORMAT ?= $(shell command -v swift-format 2>/dev/null || echo /opt/swift/usr/bin/swift-format)
# Another build directory (e.g. for a user who cannot write .build): make check SCRATCH=/path
SCRATCH ?=
SWIFTPM_FLAGS = $(if $(SCRATCH),--scratch-path $(SCRATCH))
# What the format targets look at: the Swift sources, not generated or fetched code.
FORMAT_PATHS = Package.swift Sources Tests Fuzz
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?= reader nbd fuse remote decompress
# `make bench VM_BENCH=1` adds the VM benchmarks (boots Debian kernels; see vmtests/README.md).
VM_BENCH ?=
VM_KERNELS ?= 6.1 6.12
BENCH_ROUNDS ?= 3
# Images and work files of the host benchmarks (git-ignored, kept across runs); the VM ones
# read .build-bench, which the guest sees.
BENCH_DIR ?= $(CURDIR)/.build-bench

.PHONY: help build check format lint demo deps test test-unit test-vm fuzz bench install uninstall clean

help: ## This list
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  make %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

build: ## Build the debug binaries (.build/debug/mount.erofs, .build/debug/erofs)
	$(SWIFT) build $(SWIFTPM_FLAGS)

# No root, no VM, no package installs: what a contributor runs before every commit. Suites that
# need root or the kernel skip themselves (TestSupport's HostRequirement); see README's Tests.
check: ## Fast, no root: build, the tests that need neither root nor a VM, format lint
	$(SWIFT) build $(SWIFTPM_FLAGS) --build-tests
	$(SWIFT) test $(SWIFTPM_FLAGS) --skip-build
	$(MAKE) lint

lint: ## Report code that swift-format (.swift-format) would change; fails if any
	$(SWIFT_FORMAT) lint --strict --parallel --recursive $(FORMAT_PATHS)

format: ## Rewrite the sources in place with swift-format (.swift-format)
	$(SWIFT_FORMAT) format --in-place --parallel --recursive $(FORMAT_PATHS)

demo: ## The whole job on a built-in sample: build, mkfs.erofs, mount, list, unmount (root)
	scripts/demo.sh

deps: ## Install the Debian packages the build and tests use, if missing (root or sudo)
	scripts/install-deps.sh

# Everything CI runs. Suites that need root fail here rather than skip (EROFS_REQUIRE_ROOT).
test: deps ## Everything CI runs: deps, test-unit, then test-vm (root)
	$(MAKE) test-unit test-vm

test-unit: ## All Swift tests on this kernel, real mounts included; a missing capability fails (root)
	$(SWIFT) build $(SWIFTPM_FLAGS) --build-tests
	EROFS_REQUIRE_ROOT=1 $(SWIFT) test $(SWIFTPM_FLAGS) --skip-build

test-vm: ## The nbd and recovery tests in Debian VMs, 6.1 and 6.12 kernels (root)
	vmtests/test.sh
	vmtests/nbd-kernel-tests.sh

fuzz: ## Each libFuzzer target for FUZZ_SECONDS (default 30) via scripts/fuzz.sh
	@set -e; for target in $(FUZZ_TARGETS); do scripts/fuzz.sh $$target $(FUZZ_SECONDS); done

bench: ## Host benchmarks (LZ4, extract, serve over TLS, NBD servers, FUSE vs kernel vs squashfuse); VM_BENCH=1 adds VMs
	$(SWIFT) build -c release --product erofs
	$(SWIFT) build -c release --product lz4-bench
	$(SWIFT) build -c release --product mount.erofs
	.build/release/lz4-bench
	Benchmarks/bench-extract.sh $(BENCH_ROUNDS) $(BENCH_DIR)
	Benchmarks/bench-serve-tls.sh $(BENCH_ROUNDS)
	mkdir -p $(BENCH_DIR)/nbd && cat $(BENCH_DIR)/real-1g-lz4hc.erofs >/dev/null
	/usr/bin/python3 Benchmarks/bench-nbd-servers.py .build/release/erofs $(BENCH_DIR)/real-1g-lz4hc.erofs $(BENCH_DIR)/nbd $(BENCH_ROUNDS)
	BENCH_DIR=$(BENCH_DIR) Benchmarks/bench-fuse.sh $(BENCH_ROUNDS)
ifneq ($(VM_BENCH),)
	Benchmarks/make-bench-images.sh
	@set -e; for kernel in $(VM_KERNELS); do \
	    vmtests/run.sh --kernel $$kernel --timeout 2000 -- Benchmarks/vm/bench-nbd-vs-loop.sh; \
	    vmtests/run.sh --kernel $$kernel --timeout 900 -- Benchmarks/vm/bench-qd1.sh; \
	done
endif

install: ## Install mount.erofs in SBINDIR (/sbin) and erofs in PREFIX/bin (/usr/local/bin), static release builds
	$(SWIFT) build -c release --static-swift-stdlib --product mount.erofs
	$(SWIFT) build -c release --static-swift-stdlib --product erofs
	install -D -s -m 0755 "$$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/mount.erofs" $(DESTDIR)$(SBINDIR)/mount.erofs
	install -D -s -m 0755 "$$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/erofs" $(DESTDIR)$(PREFIX)/bin/erofs

uninstall: ## Remove what install put in place
	rm -f $(DESTDIR)$(SBINDIR)/mount.erofs $(DESTDIR)$(PREFIX)/bin/erofs

clean: ## Remove the build directories
	rm -rf .build .build-fuzz
