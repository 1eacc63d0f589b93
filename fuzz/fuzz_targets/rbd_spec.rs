//! An RBD image path and `--bsopts` (rtgt::backend::rbd::RbdSpec::parse),
//! as tgtadm and targets.conf pass them: any text parses into a spec whose
//! parts are non-empty and free of the separators, or is refused; never a
//! panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rtgt::backend::rbd::RbdSpec;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, opts) = match text.split_once('\n') {
        Some((p, o)) => (p, Some(o)),
        None => (&*text, None),
    };
    if let Ok(s) = RbdSpec::parse(path, opts) {
        assert!(!s.pool.is_empty() && !s.image.is_empty());
        assert!(!s.pool.contains('/'));
        assert!(!s.image.contains('@'));
        assert!(s.snap.as_deref() != Some(""));
        for (k, _) in &s.options {
            assert!(!k.is_empty() && !k.contains(';'));
        }
    }
});
