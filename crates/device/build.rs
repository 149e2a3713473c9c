//! Records when this program was built: a clock that reads earlier has clearly not been set.
//!
//! `SOURCE_DATE_EPOCH` (reproducible builds; `cargo xtask dist` sets it from the last commit)
//! wins over the current time.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=CODEREADER_BUILD_EPOCH={epoch}");
}
