# The two commands of the README: `make demo` and `make check`.
CARGO ?= cargo

.PHONY: demo sim-demo check sim bench install
COROSYNC_PACKAGES = corosync libcpg-dev libquorum-dev libcmap-dev libcfg-dev libvotequorum-dev \
	libqb-dev pkg-config iproute2 util-linux

# A real 3-node corosync cluster in network namespaces recovers from a node failure (needs root;
# installs corosync if missing). Without root, the simulated cluster's timeline instead.
demo:
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make demo: a real cluster needs root (network namespaces); showing the simulated cluster instead"; \
		$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --demo; \
	else \
		command -v corosync >/dev/null && command -v pkg-config >/dev/null && pkg-config --exists libcpg || \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(COROSYNC_PACKAGES) >/dev/null; }; \
		$(CARGO) build --release -q --workspace --bins && \
		GFS_BIN_DIR=$(CURDIR)/target/release ./target/release/gfs_cluster_demo; \
	fi

# The simulated cluster's recovery timeline (no root needed).
sim-demo:
	$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --demo

# Every test of the workspace: unit, property, scenario, seed sweep, sabotage, integration.
# The binaries first: the cluster tests run gfs_controld, gfs_control and gfs_kernel_sim.
check:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# A longer seeded sweep than the tests run.
sim:
	$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --seeds 20000

bench:
	$(CARGO) bench -p gfs-sim
