//! Persistent reservations that persist through power loss (APTPL, SPC-4
//! §5.13.5) on LUs whose state lives in this process: once a REGISTER sets
//! APTPL, every change is written to the LU's state file before the
//! command's GOOD (a temporary file, fsync, rename, fsync of the
//! directory, so a crash leaves the old state or the new one), and read
//! back when the LU is added again, at start-up or later. A REGISTER that
//! clears APTPL removes the file. The file names the medium it belongs
//! to: state saved for another backing store is not restored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sense::{asc, key, Sense};

const MAGIC: &[u8] = b"RTGTPR1\n";

/// A state file to write (or remove) for one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PrSave {
    pub path: PathBuf,
    /// The backing store the state belongs to.
    pub medium: String,
    /// The encoded state, `None` to remove the file (APTPL cleared).
    pub state: Option<Vec<u8>>,
    /// The state's `seq`: a save older than the last one written (two
    /// loops' commands finishing out of order) is dropped.
    pub seq: u64,
    pub saved: SavedSeq,
}

/// The `seq` last written for a LU, shared by its saves.
#[derive(Debug, Clone, Default)]
pub(crate) struct SavedSeq(pub Arc<Mutex<u64>>);

impl PartialEq for SavedSeq {
    fn eq(&self, o: &SavedSeq) -> bool {
        Arc::ptr_eq(&self.0, &o.0)
    }
}

impl Eq for SavedSeq {}

impl PrSave {
    pub(crate) fn run(&self) -> Result<(), Sense> {
        let mut saved = self.saved.0.lock().unwrap_or_else(|p| p.into_inner());
        if self.seq <= *saved {
            return Ok(());
        }
        let r = match &self.state {
            Some(state) => write_atomically(&self.path, &file_bytes(&self.medium, state)),
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => sync_dir(&self.path),
            },
        };
        match r {
            Ok(()) => {
                *saved = self.seq;
                Ok(())
            }
            // The change is made but would not survive a restart: say
            // so rather than GOOD.
            Err(_) => Err(Sense::new(
                key::HARDWARE_ERROR,
                asc::INTERNAL_TARGET_FAILURE,
            )),
        }
    }
}

fn file_bytes(medium: &str, state: &[u8]) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&(medium.len() as u32).to_be_bytes());
    v.extend_from_slice(medium.as_bytes());
    v.extend_from_slice(state);
    v
}

/// The encoded state a file holds for `medium`; `None` for a file of
/// another medium or one that does not parse.
pub(crate) fn state_for<'a>(file: &'a [u8], medium: &str) -> Option<&'a [u8]> {
    let rest = file.strip_prefix(MAGIC)?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let name = rest.get(4..4 + len)?;
    (name == medium.as_bytes()).then(|| &rest[4 + len..])
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_for(path);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// `<file>.tmp` beside `path`: each LU's file has a temporary of its own
/// (two LUNs of a target save at once; `with_extension` would give
/// `<target>.1` and `<target>.2` the same one).
fn temp_for(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Make a rename or removal in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_name_their_medium() {
        let f = file_bytes("/srv/a.img", b"state");
        assert_eq!(state_for(&f, "/srv/a.img"), Some(&b"state"[..]));
        assert_eq!(state_for(&f, "/srv/b.img"), None);
        assert_eq!(state_for(&f[..10], "/srv/a.img"), None);
        assert_eq!(state_for(b"garbage", "/srv/a.img"), None);
    }

    #[test]
    fn each_file_has_its_own_temporary() {
        let (a, b) = (Path::new("/d/pr/iqn.x:t.1"), Path::new("/d/pr/iqn.x:t.2"));
        assert_ne!(temp_for(a), temp_for(b));
        assert_eq!(temp_for(a), Path::new("/d/pr/iqn.x:t.1.tmp"));
    }

    #[test]
    fn saves_are_atomic_ordered_and_removable() {
        let dir = std::env::temp_dir().join(format!("rtgt-aptpl-{}", std::process::id()));
        let path = dir.join("pr").join("lu");
        let saved = SavedSeq::default();
        let save = |seq: u64, state: Option<&[u8]>| PrSave {
            path: path.clone(),
            medium: "m".into(),
            state: state.map(<[u8]>::to_vec),
            seq,
            saved: saved.clone(),
        };
        save(2, Some(b"two")).run().unwrap();
        // An older change finishing later does not overwrite a newer one.
        save(1, Some(b"one")).run().unwrap();
        let f = std::fs::read(&path).unwrap();
        assert_eq!(state_for(&f, "m"), Some(&b"two"[..]));
        assert!(!dir.join("pr").join("lu.tmp").exists());
        save(3, None).run().unwrap();
        assert!(!path.exists());
        // Removing what is not there is fine.
        save(4, None).run().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
