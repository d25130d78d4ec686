# The README's two commands: `make demo` and `make check`.
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo sim-demo vm-demo vm-deps check check-deps deps package-deps sim bench install \
	fuzz fuzz-short soak

# Debian packages, each list written only here: `make deps`, `make vm-deps` and
# `make package-deps` install what is missing of them (as root); `make check` runs `make deps`
# so that it works on a fresh machine; .ci/run and .ci/package install through these targets.
#
# corosync and the libraries the daemon links; ip and unshare for the netns clusters.
COROSYNC_PACKAGES = corosync libcpg-dev libquorum-dev libcmap-dev libcfg-dev libvotequorum-dev \
	libqb-dev pkg-config iproute2 util-linux
# The test tools: ps for the harnesses, mandoc for the man pages' lint.
TOOL_PACKAGES = procps mandoc
# The pacemaker tier (tests/pacemaker.rs): pacemaker's daemons, its command-line tools and
# libstonithd (the daemon's fencing=pacemaker backend); xmllint for ocf-tester.
PACEMAKER_PACKAGES = pacemaker pacemaker-cli-utils libxml2-utils
# The VM tier's packages (what tests/vm.rs and vm-demo need); qemu-utils is added pinned.
VM_PACKAGES = qemu-system-x86 linux-image-amd64 gfs2-utils dlm-controld corosync busybox-static e2fsprogs
# .ci/package: the deb build, rpmbuild and rpmspec, python3 for the OCF meta-data check.
PACKAGING_PACKAGES = debhelper dpkg-dev rpm python3

# The packages of the list $(1) that dpkg does not have installed.
missing = $(shell for p in $(1); do \
	dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done)

# Installs the packages of the list $(1) that are missing (as root).
define apt_install
	@m="$(strip $(call missing,$(1)))"; \
	if [ -n "$$m" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "$@: installing $$m needs root" >&2; exit 1; fi; \
		echo "$@: apt-get install $$m"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$m >/dev/null; \
	fi
endef

# corosync and its libraries, the test tools and pacemaker: what `make check` needs (the VM
# tier's packages are `make vm-deps`).
deps:
	$(call apt_install,$(COROSYNC_PACKAGES) $(TOOL_PACKAGES) $(PACEMAKER_PACKAGES))

# What .ci/package needs to build and check the deb and the rpm.
package-deps:
	$(call apt_install,$(PACKAGING_PACKAGES))

# Reports what `make check` lacks once `make deps` ran (or could not run, without root). The
# build needs corosync's libraries; without the others the tests that need them skip (and fail
# when CI is set).
check-deps:
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) -s deps; fi
	@command -v corosync >/dev/null && command -v pkg-config >/dev/null && \
	pkg-config --exists libcpg libquorum libcmap libcfg libvotequorum || { \
		echo "make check: corosync or its libraries are missing ($(strip $(call missing,$(COROSYNC_PACKAGES)))): run make deps as root" >&2; \
		exit 1; }
	@m="$(strip $(call missing,$(TOOL_PACKAGES) $(PACEMAKER_PACKAGES)))"; \
	if [ -n "$$m" ]; then echo "make check: note: $$m missing (make deps installs them); the tests that need them skip" >&2; fi
	@m="$(strip $(call missing,$(VM_PACKAGES)))"; \
	if [ -n "$$m" ]; then echo "make check: note: $$m missing (make vm-deps installs them); the VM tier skips" >&2; fi

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
	$(MAKE) -s vm-deps
	$(CARGO) build --release -q --workspace --bins
	./target/release/gfs_vm_demo

# The VM tier's packages, as .ci/run installs them. qemu-system-x86 is bookworm's 7.2; a newer
# qemu-utils (backports) conflicts with it, so qemu-utils is pinned to the same version.
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
check: check-deps
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

# The simulator's cost bench, then the real-cluster figures (root: network namespaces; the
# scale bench, `cargo bench --bench scale`, is run by hand).
bench:
	$(CARGO) bench -p gfs-sim
	@if [ "$$(id -u)" = 0 ]; then \
		$(CARGO) build --release -q --workspace --bins && $(CARGO) bench --bench cluster; \
	else \
		echo "make bench: the cluster bench needs root (network namespaces); skipped" >&2; \
	fi

# `make install`: packaging/install.sh, the one list of the files the deb and rpm ship, from an
# earlier `cargo build --release`. Directories given on the command line (DESTDIR, PREFIX,
# SBINDIR, UNITDIR, ...: see the script's header) reach it through the environment.
RELEASEDIR ?= $(or $(CARGO_TARGET_DIR),target)/release

install:
	BUILDDIR=$(RELEASEDIR) sh packaging/install.sh
