//! The PID file: written atomically (a temporary file beside it, then `rename`) when the
//! master serves, removed at exit only while it still names this master.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

pub(crate) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Checks that a PID file can be written at `path` (by writing and removing its
    /// temporary file): a missing or unwritable directory, or a refused `open` or `unlink`,
    /// is an error naming the path and the call.
    pub(crate) fn check(path: &Path) -> Result<PidFile, Error> {
        let file = PidFile {
            path: path.to_owned(),
        };
        let temporary = file.temporary();
        let fail = |e| Error::Control {
            path: path.to_owned(),
            what: "cannot write the PID file".to_owned(),
            source: Some(e),
        };
        std::fs::File::create(&temporary).map_err(|e| fail(crate::sys::named("open", e)))?;
        // Where it cannot be removed (a sandbox refuses `unlink`), neither could the PID file
        // at exit, nor a stale one: the run fails here, and the temporary file stays.
        std::fs::remove_file(&temporary).map_err(|e| fail(crate::sys::named("unlink", e)))?;
        Ok(file)
    }

    fn temporary(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{}.tmp", crate::sys::getpid()));
        PathBuf::from(name)
    }

    /// Writes `pid` (a temporary file, then `rename` over the path). A failure is a
    /// warning naming the call.
    pub(crate) fn write(&self, pid: u32) {
        let temporary = self.temporary();
        let written = std::fs::File::create(&temporary)
            .map_err(|e| crate::sys::named("open", e))
            .and_then(|mut f| {
                f.write_all(format!("{pid}\n").as_bytes())
                    .map_err(|e| crate::sys::named("write", e))
            })
            .and_then(|()| {
                std::fs::rename(&temporary, &self.path).map_err(|e| crate::sys::named("rename", e))
            });
        match written {
            Ok(()) => log::info!("PID file {} names {pid}", self.path.display()),
            Err(e) => {
                let _ = std::fs::remove_file(&temporary);
                log::warn!("cannot write the PID file {}: {e}", self.path.display());
            }
        }
    }

    /// At exit: removes the file if it names `pid` (a new master's is left alone).
    pub(crate) fn remove(&self, pid: u32) {
        let names_us =
            std::fs::read_to_string(&self.path).is_ok_and(|text| text.trim() == pid.to_string());
        if names_us {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!(
                    "cannot remove the PID file {}: {}",
                    self.path.display(),
                    crate::sys::named("unlink", e)
                );
            }
        }
    }
}
