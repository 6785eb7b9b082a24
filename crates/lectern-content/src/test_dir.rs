//! A temporary directory for this crate's unit tests, removed when dropped.

use std::path::PathBuf;

/// A fresh, empty directory under the system temp dir; `.0` is its path.
pub(crate) struct TestDir(pub(crate) PathBuf);

impl TestDir {
    /// Creates it, named after `tag`, the process and a random number.
    pub(crate) fn new(tag: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!(
            "lectern-content-{tag}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).expect("create a test directory");
        TestDir(d)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
