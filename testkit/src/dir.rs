//! Where a launcher keeps its files.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::{Error, Result};

/// A temp dir (removed on drop) or one the caller keeps.
#[derive(Debug)]
pub(crate) enum Dir {
    Temp(TempDir),
    Kept(PathBuf),
}

impl Dir {
    pub(crate) fn new(kept: Option<&Path>) -> Result<Dir> {
        match kept {
            Some(p) => {
                std::fs::create_dir_all(p).map_err(Error::io("creating", p))?;
                Ok(Dir::Kept(p.into()))
            }
            None => Ok(Dir::Temp(TempDir::new().map_err(Error::io("creating a temp dir in", std::env::temp_dir()))?)),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}
