//! How a test that cannot run here says so. In CI (`CI=true`; CI runs the suite as root) a
//! skip is a failure: a green CI must not hide kernel tests that never ran.

/// Whether this is a CI run, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Says that the test is skipped and why; panics instead in CI.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !in_ci(),
        "{test}: would be skipped ({reason}), and CI=true: every test must run in CI"
    );
    eprintln!("{test}: skipped: {reason}");
}

/// Whether the test runs as root; when not, skips (a failure in CI).
pub fn need_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(test, "needs root (run `cargo xtask test` as root)");
    false
}
