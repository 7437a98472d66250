//! What the property tests share: their case counts and their runtime.
// Each test binary uses what it needs of this.
#![allow(dead_code)]

use std::sync::OnceLock;

/// Property-test cases: `default`, or `PROPTEST_CASES`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One multi-threaded runtime (2 workers) for every case of a test binary.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}
