//! `targets.conf` parsing (tgt_admin::conf::parse_str): any text either
//! parses or is refused with an error, never a panic.
//!
//! `include` reads the file system, so inputs that could name an include
//! (a line starting with `include`, also once a `/* ... */` comment is cut
//! out of it) are skipped: the fuzzer must not read /dev/zero or walk `/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// Whether some physical line could become an include directive: the
/// reader only cuts C comments out of a line before looking for one.
fn may_include(text: &str) -> bool {
    text.lines().any(|l| {
        let mut l = l.to_string();
        if let (Some(a), Some(b)) = (l.find("/*"), l.rfind("*/")) {
            if a < b {
                l = format!("{}{}", &l[..a], &l[b + 2..]);
            }
        }
        l.to_ascii_lowercase().contains("include")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.to_ascii_lowercase().contains("include") || may_include(text) {
        return;
    }
    let _ = tgt_admin::conf::parse_str(text, "fuzz.conf");
});
