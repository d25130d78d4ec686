# The two commands of the README: `make demo` and `make check`.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo sim-demo vm-demo vm-deps check deps sim bench install fuzz fuzz-short soak
COROSYNC_PACKAGES = corosync libcpg-dev libquorum-dev libcmap-dev libcfg-dev libvotequorum-dev \
	libqb-dev pkg-config iproute2 util-linux

# The pacemaker tier (tests/pacemaker.rs): pacemaker's daemons, its command-line tools and
# libstonithd (the daemon's fencing=pacemaker backend); xmllint for ocf-tester.
PACEMAKER_PACKAGES = pacemaker pacemaker-cli-utils libxml2-utils

# corosync and the libraries the daemon links: installed with apt when missing (as root).
# Pacemaker too, for the pacemaker tier; without root that tier skips, so it is not required.
deps:
	@command -v corosync >/dev/null && command -v pkg-config >/dev/null && pkg-config --exists libcpg || \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(COROSYNC_PACKAGES) >/dev/null; \
	else \
		echo "corosync and its -dev libraries are missing: apt-get install $(COROSYNC_PACKAGES)" >&2; exit 1; \
	fi
	@command -v pacemakerd >/dev/null && command -v stonith_admin >/dev/null && command -v xmllint >/dev/null || \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PACEMAKER_PACKAGES) >/dev/null; \
	else \
		echo "note: the pacemaker tier needs root and: apt-get install $(PACEMAKER_PACKAGES)" >&2; \
	fi

# A real 3-node corosync cluster in network namespaces recovers from a node failure (needs root;
# installs corosync if missing). Without root, the simulated cluster's timeline instead.
demo:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make demo: a real cluster needs root (network namespaces); showing the simulated cluster instead"; \
		$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --demo; \
	else \
		$(MAKE) -s deps && \
		$(CARGO) build --release -q --workspace --bins && \
		GFS_BIN_DIR=$(CURDIR)/target/release ./target/release/gfs_cluster_demo; \
	fi

# The real kernel: three QEMU VMs with Debian's gfs2 and dlm, corosync, dlm_controld and
# gfs_controld on one shared disk lose a node; prints the kernel's recovery timeline, the
# daemon's status and fsck.gfs2 (needs root; installs the VM packages if missing).
vm-demo:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make vm-demo: the VMs need root (network namespace, taps); try make demo or make sim-demo" >&2; exit 1; \
	fi
	$(MAKE) -s deps
	$(CARGO) build --release -q --workspace --bins
	./target/release/gfs_vm_demo

# The VM tier's packages (what tests/vm.rs and vm-demo need), as .ci/run installs them.
# qemu-system-x86 is bookworm's 7.2; a newer qemu-utils (backports) conflicts with it, so
# qemu-utils is pinned to the same version.
VM_PACKAGES = qemu-system-x86 linux-image-amd64 gfs2-utils dlm-controld corosync busybox-static e2fsprogs
vm-deps:
	v=$$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $$2}'); \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
		$(VM_PACKAGES) "qemu-utils=$$v" >/dev/null

# The simulated cluster's recovery timeline (no root needed).
sim-demo:
	$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --demo

# Every test of the workspace: unit, property, scenario, seed sweep, sabotage, integration.
# The binaries first: the cluster tests run gfs_controld, gfs_control and gfs_kernel_sim (the
# pacemaker tier, tests/pacemaker.rs, through pacemaker's OCF clone); the VM tier
# (tests/vm.rs) runs the release ones inside its guests.
check: deps
	$(CARGO) build --workspace --bins
	$(CARGO) build --release --workspace --bins
	mkdir -p target
	set -o pipefail; $(CARGO) test --workspace 2>&1 | tee target/check.log
	@awk '/^test result:/ { passed += $$4; failed += $$6 } \
		END { printf "check: %d passed, %d failed\n", passed, failed }' target/check.log
	$(MAKE) fuzz-short

# Coverage-guided fuzzing of the decoders of untrusted input (CPG wire, uevents, control
# protocol, config file) with libFuzzer on the stable toolchain; prints each target's
# execution count. FUZZ_SECONDS per target (or FUZZ_RUNS inputs each); FUZZ_TARGETS to pick.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= wire uevent control config
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) nice fuzz/run.sh $(FUZZ_TARGETS)

# make check's share: 20 s per target, corpora kept in target/fuzz between runs.
fuzz-short:
	FUZZ_SECONDS=20 FUZZ_RUNS= nice fuzz/run.sh $(FUZZ_TARGETS)

# The chaos soak on a real 5-node corosync cluster (root): CYCLES seeded random faults, safety
# checks on the kernels' records after each, a 60 s bound on every recovery. SEED replays a
# run's choices (default: from the clock; printed first).
CYCLES ?= 50
SEED ?=
soak: deps
	$(CARGO) build --release -q --workspace --bins
	./target/release/gfs_soak --cycles $(CYCLES) $(if $(SEED),--seed $(SEED))

# A longer seeded sweep than the tests run.
sim:
	$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --seeds 20000

bench:
	$(CARGO) bench -p gfs-sim

# `make install`: the files the deb and rpm ship, from an earlier `cargo build --release`
# (packaging/install.sh is the packages' copy of this list; tests/packaging.rs keeps them equal).
PREFIX ?= /usr
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
ENVFILE ?= $(SYSCONFDIR)/default/gfs_controld
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
OCFDIR ?= $(PREFIX)/lib/ocf/resource.d/gfs-controld
RELEASEDIR ?= $(or $(CARGO_TARGET_DIR),target)/release

install:
	@test -x $(RELEASEDIR)/gfs_controld -a -x $(RELEASEDIR)/gfs_control || \
		{ echo "run '$(CARGO) build --release' first (RELEASEDIR=$(RELEASEDIR))" >&2; exit 1; }
	install -D -m 0755 $(RELEASEDIR)/gfs_controld $(DESTDIR)$(SBINDIR)/gfs_controld
	install -D -m 0755 $(RELEASEDIR)/gfs_control $(DESTDIR)$(SBINDIR)/gfs_control
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/sbin/gfs_controld|$(SBINDIR)/gfs_controld|' packaging/systemd/gfs_controld.service \
		> $(DESTDIR)$(UNITDIR)/gfs_controld.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/gfs_controld.service
	install -D -m 0644 man/gfs_controld.8 $(DESTDIR)$(MANDIR)/man8/gfs_controld.8
	install -D -m 0644 man/gfs_control.8 $(DESTDIR)$(MANDIR)/man8/gfs_control.8
	install -D -m 0644 man/gfs_controld.conf.5 $(DESTDIR)$(MANDIR)/man5/gfs_controld.conf.5
	install -D -m 0644 packaging/gfs_controld.conf $(DESTDIR)$(SYSCONFDIR)/gfs_controld.conf
	install -D -m 0644 packaging/default/gfs_controld $(DESTDIR)$(ENVFILE)
	install -D -m 0755 packaging/ocf/gfs_controld $(DESTDIR)$(OCFDIR)/gfs_controld
	install -d -m 0755 $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	set -e; for bin in gfs_control gfs_controld; do \
		if [ $$bin = gfs_control ]; then gen="completions"; else gen="--completions"; fi; \
		$(RELEASEDIR)/$$bin $$gen bash > $(DESTDIR)$(BASHCOMPDIR)/$$bin; \
		$(RELEASEDIR)/$$bin $$gen zsh > $(DESTDIR)$(ZSHCOMPDIR)/_$$bin; \
		$(RELEASEDIR)/$$bin $$gen fish > $(DESTDIR)$(FISHCOMPDIR)/$$bin.fish; \
		chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/$$bin $(DESTDIR)$(ZSHCOMPDIR)/_$$bin \
			$(DESTDIR)$(FISHCOMPDIR)/$$bin.fish; \
	done
