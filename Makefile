# The two commands of the README: `make demo` and `make check`.
CARGO ?= cargo

.PHONY: demo check sim bench
demo:
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
