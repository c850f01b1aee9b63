//! Faults injected on request, for the tests of supervision: with
//! `SLUICE_TEST_FAULT=<point>` in its environment the daemon panics when it reaches that
//! point, as a bug would. Nothing sets it in production; the points are listed in the
//! README's "Limits and failure behaviour".

/// The variable naming the point to fail at.
const VARIABLE: &str = "SLUICE_TEST_FAULT";

/// Panics when `point` is the one asked for.
pub fn point(point: &str) {
    if std::env::var_os(VARIABLE).is_some_and(|v| v == point) {
        panic!("fault injected at {point} ({VARIABLE})");
    }
}
