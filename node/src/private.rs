//! The data directory and the files in it, private to the node's user
//! whatever the umask: the directory 0700, its files (the embedded database,
//! the admin token) 0600. Files are opened without following a symbolic link
//! (`O_NOFOLLOW`), so a link planted in the data directory cannot make the
//! node read or overwrite a file elsewhere.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files in it.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700, or narrows an
/// existing one to 0700 when others could read or enter it.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    }
    o
}

/// A clearer error than "too many levels of symbolic links" for a link
/// where a file of the data directory belongs.
fn no_link(path: &Path, e: io::Error) -> io::Error {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link; refusing to follow it (replace it with a regular file)",
                path.display()
            ),
        );
    }
    let _ = path;
    e
}

/// Narrows an open file to 0600 and checks that it is a regular file.
fn tighten(path: &Path, f: &File) -> io::Result<()> {
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
    }
    Ok(())
}

/// Makes sure `path` exists as a regular file of mode 0600 (created empty
/// when missing, narrowed when others could read it), refusing a symbolic
/// link. For files another library then opens by name (the database).
pub fn ensure_file(path: &Path) -> io::Result<()> {
    let f = options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| no_link(path, e))?;
    tighten(path, &f)
}

/// The text of `path`, `None` when it does not exist; a symbolic link is an
/// error. The file is narrowed to 0600.
pub fn read(path: &Path) -> io::Result<Option<String>> {
    let mut f = match options().read(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(no_link(path, e)),
    };
    tighten(path, &f)?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Writes `text` to `path` (mode 0600), replacing its content; a symbolic
/// link is an error.
pub fn write(path: &Path, text: &str) -> io::Result<()> {
    let mut f = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| no_link(path, e))?;
    tighten(path, &f)?;
    f.write_all(text.as_bytes())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn directory_and_files_are_private() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // An existing open directory is narrowed.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("f");
        assert_eq!(read(&f).unwrap(), None);
        write(&f, "hello").unwrap();
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read(&f).unwrap().as_deref(), Some("hello"));
        assert_eq!(mode(&f), 0o600);
        let g = dir.join("g");
        ensure_file(&g).unwrap();
        assert_eq!(mode(&g), 0o600);
        std::fs::write(&g, "kept").unwrap();
        ensure_file(&g).unwrap();
        assert_eq!(std::fs::read_to_string(&g).unwrap(), "kept");
    }

    #[test]
    fn symbolic_links_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("elsewhere");
        std::fs::write(&target, "not yours").unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for e in [
            read(&link).unwrap_err(),
            write(&link, "x").unwrap_err(),
            ensure_file(&link).unwrap_err(),
        ] {
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "not yours");
    }
}
