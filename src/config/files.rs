//! Secrets kept in files (`secret_file`, `database_url_file`, ...): systemd
//! `LoadCredential`, Kubernetes secret volumes, Docker secrets. Read once at
//! start; errors name the file and never its contents.

use std::path::{Path, PathBuf};

/// Largest secret file the relay reads: a secret or a URL, not a document.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Where relative file names point: `$CREDENTIALS_DIRECTORY` when systemd
/// set it (`LoadCredential=`), else the config file's directory. The same
/// config then reads `/etc/outbox-relay/NAME` when run by hand and the
/// service's private copy of it under systemd.
pub(super) fn base_dir(config_path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    }
}

/// `name` as given, or relative to `base` (the config file's directory).
pub(super) fn resolve(base: &Path, name: &str) -> PathBuf {
    let path = Path::new(name.trim());
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// The file's text without surrounding white space (the newline an editor or
/// `echo` leaves). The error names the path and why, never the contents.
pub(super) fn read_secret_text(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("cannot read {shown}: not a regular file"));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{shown} is {} bytes, more than a secret file may hold ({MAX_SECRET_FILE_BYTES})",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(text.to_string())
}

/// Whole file contents (certificates, keys), with the same messages.
pub(super) fn read_bytes(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}
