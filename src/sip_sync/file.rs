//! The dispatcher file on disk: read its hash, replace it atomically.
//!
//! Kamailio re-reads the whole file on `dispatcher.reload`; if it ever saw a partly
//! written file it would load a partial routing table. So the new content goes to a
//! temporary file in the same directory (same filesystem, so `rename` is atomic) and
//! replaces the old file in one `rename`. It is made durable ([`persist`]) after
//! Kamailio has loaded it, off the failover's path.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::routing::content_hash;

/// [`content_hash`] of the file's current content, or `None` when it does not exist.
pub fn file_hash(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(content_hash(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replace `path` with `contents` so that a reader sees either the old or the new
/// file, never a mix; the temporary file is removed when anything fails. Readers
/// (Kamailio's reload) see the new content at once; [`persist`] makes it durable.
pub fn replace(path: &Path, contents: &str) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dispatcher.list".into());
    let tmp = directory(path).join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Flush the file at `path` and its directory entry to disk, so that a node crash
/// cannot bring back an older routing. Called once Kamailio runs the file, not
/// before: an fsync waits for the filesystem's journal, and one took 247 ms in the
/// `e2e_failover` bench while the reload it held back needs a millisecond. Until it
/// completes, a node crash leaves the old file or the new one on ext4 (a rename over
/// an existing file writes its data first, `auto_da_alloc`); whatever is left, a
/// starting sip-sync believes the file only if it parses (an empty file does not).
pub fn persist(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    std::fs::File::open(directory(path))?.sync_all()
}

fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lifeline-file-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_replaces_content_and_leaves_no_temp_file() {
        let dir = temp_dir();
        let path = dir.join("dispatcher.list");
        assert_eq!(file_hash(&path).unwrap(), None);
        replace(&path, "1 sip:a:5060\n").unwrap();
        replace(&path, "2 sip:b:5060\n").unwrap();
        persist(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2 sip:b:5060\n");
        assert_eq!(
            file_hash(&path).unwrap(),
            Some(content_hash("2 sip:b:5060\n"))
        );
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_write_keeps_the_old_file() {
        let dir = temp_dir();
        let path = dir.join("dispatcher.list");
        replace(&path, "1 sip:a:5060\n").unwrap();
        // Renaming a file over a non-empty directory fails: the old content must stay.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(replace(&blocked, "x").is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1 sip:a:5060\n");
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
