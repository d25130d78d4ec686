//! The `make demo` scenario.

pub fn run_demo() -> String {
    String::new()
}
