//! The config parser on arbitrary UTF-8: it never panics, and every error
//! points at a place inside the text (1-based line and column).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Every interface exists, so validation runs the same on any host.
    let Err(errors) = lb_core::config::parse(text, "fuzz.toml", &|_: &str| true) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    for e in &errors.0 {
        assert!(e.line >= 1 && e.col >= 1, "{e}");
        let line = lines
            .get(e.line - 1)
            .unwrap_or_else(|| panic!("{e}: the text has {} lines", lines.len()));
        // One past the last character: an error at the end of a line.
        let width = line.chars().count() + 1;
        assert!(e.col <= width, "{e}: line {} has {width} columns", e.line);
    }
});
