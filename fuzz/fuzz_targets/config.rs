//! `proxy.toml` text through the config loader: it loads, or its error names a key (a path under one
//! of the file's tables, or a key the text itself wrote, e.g. an unknown one) or is about the file
//! as a whole.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The file's top-level tables.
const TABLES: [&str; 8] = [
    "server",
    "admin",
    "log",
    "demo",
    "clients",
    "auth_service",
    "backends",
    "routes",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Secrets may be read from files: special files could block or never end.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    match botbridge::config::parse(text) {
        Ok(config) => assert!(config.restart_only_differences(&config).is_empty()),
        Err(e) => {
            assert!(!e.problem.is_empty(), "an error without a problem");
            if !e.key.is_empty() {
                let top = e.key.split(['.', '[']).next().unwrap_or_default();
                assert!(
                    TABLES.contains(&top) || text.contains(top),
                    "`{}` is not a key of the file: {e}",
                    e.key
                );
                assert!(!e.key.contains('\n'), "a key over lines: {e:?}");
            }
        }
    }
});
