# Entry points; README.md explains them. Most targets need root (they mount filesystems).
PREFIX ?= /usr/local
SBINDIR ?= /sbin
SWIFT ?= swift

.PHONY: build demo test test-unit test-vm install uninstall clean

build:
	$(SWIFT) build

# The whole job on a built-in sample (build, mkfs.erofs, mount, list, unmount).
demo:
	scripts/demo.sh

# Everything CI runs: unit and real-mount tests on this kernel, then the VM (nbd) tests.
test: test-unit test-vm

test-unit:
	scripts/install-deps.sh
	$(SWIFT) build --build-tests
	$(SWIFT) test

test-vm:
	tests/vm/test.sh
	tests/vm/nbd-kernel-tests.sh

install:
	$(SWIFT) build -c release --static-swift-stdlib --product mount.erofs
	$(SWIFT) build -c release --static-swift-stdlib --product erofs
	install -D -s -m 0755 "$$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/mount.erofs" $(DESTDIR)$(SBINDIR)/mount.erofs
	install -D -s -m 0755 "$$($(SWIFT) build -c release --static-swift-stdlib --show-bin-path)/erofs" $(DESTDIR)$(PREFIX)/bin/erofs

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/mount.erofs $(DESTDIR)$(PREFIX)/bin/erofs

clean:
	rm -rf .build
