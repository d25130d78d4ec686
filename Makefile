# The two commands of the README: `make demo` and `make check`.
CARGO ?= cargo

.PHONY: demo check
demo:
	$(CARGO) run --release -q -p gfs-sim --bin gfs_sim -- --demo

check:
	$(CARGO) test --workspace --all-targets
