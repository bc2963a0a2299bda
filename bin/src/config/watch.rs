//! Exit when the `--config` file changes, as kube-proxy does (its pod restarts with the
//! new file). kube-proxy watches the file itself and misses a ConfigMap update, which
//! swaps a symlink in the file's directory; kproxy watches the directory and compares the
//! file's content, so a ConfigMap edit is noticed too, and a touch without a change is not.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

/// How long the directory must be quiet before the file is read again.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Watches `path`; sends `changed` once its content differs from what it is now.
pub fn spawn<T: Send + 'static>(path: &Path, tx: Sender<T>, changed: T) -> Result<()> {
    let original = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (events_tx, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = events_tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).with_context(|| format!("watching {}", dir.display()))?;
    let path = path.to_path_buf();
    std::thread::Builder::new().name("config-watch".into()).spawn(move || {
        let _watcher = watcher;
        while events.recv().is_ok() {
            // Let the writer finish first: a rewrite in place truncates the file, and
            // its half-written content must not count as a change (it did, now and then,
            // in this module's test). A missing file is mid-replacement; its new content
            // decides.
            while events.recv_timeout(SETTLE).is_ok() {}
            if std::fs::read(&path).is_ok_and(|now| now != original) {
                let _ = tx.send(changed);
                return;
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_changed_file_is_reported_and_a_touch_is_not() {
        let dir = std::env::temp_dir().join(format!("kproxy-config-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.conf");
        std::fs::write(&file, "mode: nftables\n").unwrap();
        let (tx, rx) = mpsc::channel();
        spawn(&file, tx, "changed").unwrap();
        std::fs::write(&file, "mode: nftables\n").unwrap();
        std::fs::write(dir.join("other"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "same content: no exit");
        // A ConfigMap-style update: a new file renamed over the old one.
        std::fs::write(dir.join("new"), "mode: ipvs\n").unwrap();
        std::fs::rename(dir.join("new"), &file).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("changed"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
