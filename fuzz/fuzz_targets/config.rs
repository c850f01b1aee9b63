//! The config loader (YAML with positions, the Istio model, per-object validation) against
//! arbitrary text: it never panics, stays inside libFuzzer's time and memory limits (the
//! YAML node, depth and document bounds), and every error it reports names the file and a
//! line inside the text. The `config` module is compiled here on its own: it depends only
//! on the crates listed in Cargo.toml, not on the rest of the daemon.
#![no_main]

#[allow(dead_code, unused_imports)]
#[path = "../../gateway-user/src/config/mod.rs"]
mod config;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = config::check_text("fuzz.yaml", text);
    // YAML breaks lines at LF, CRLF and a lone CR.
    let lines = text.matches('\n').count() + text.replace("\r\n", "\n").matches('\r').count() + 2;
    for diagnostic in &checked.diagnostics {
        assert_eq!(diagnostic.file, std::path::Path::new("fuzz.yaml"));
        if let Some(mark) = diagnostic.mark {
            assert!(mark.line <= lines, "{diagnostic:?} beyond line {lines}");
        }
        let _ = diagnostic.to_string();
    }
    for object in &checked.objects {
        assert!(!object.name().is_empty());
    }
});
