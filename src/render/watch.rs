//! Watches the template directory and reloads the templates when they change.
//!
//! The callback receives the freshly loaded [`Renderer`] or the reason it was refused.
//! On `Ok` the caller swaps renderers and runs [`super::rerender_all`]; on `Err` it logs
//! the error and keeps the previous renderer, so the files already rendered keep being
//! served untouched.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use super::{RenderError, Renderer};

/// How often the watcher thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(200);

/// A running watch; dropping it stops the watch and its thread.
pub struct TemplateWatcher {
    watcher: Option<RecommendedWatcher>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TemplateWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateWatcher").finish_non_exhaustive()
    }
}

impl Drop for TemplateWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.watcher.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts watching `dir`. After a change, once no further change arrived for `debounce`
/// (editors write a file in several steps), the templates are reloaded and `on_change`
/// is called from the watcher's thread.
pub fn watch_templates<F>(
    dir: impl AsRef<Path>,
    debounce: Duration,
    mut on_change: F,
) -> Result<TemplateWatcher, RenderError>
where
    F: FnMut(Result<Renderer, RenderError>) + Send + 'static,
{
    let dir: PathBuf = dir.as_ref().to_path_buf();
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reads do not change templates; errors (e.g. queue overflow) may hide a
        // change, so they trigger a reload too.
        let relevant = match res {
            Ok(ev) => !matches!(ev.kind, EventKind::Access(_)),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| watch_err(&dir, e))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_err(&dir, e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_thread = Arc::clone(&stop);
    let thread_dir = dir.clone();
    let thread = std::thread::Builder::new()
        .name("template-watch".into())
        .spawn(move || loop {
            if stop_thread.load(Ordering::Relaxed) {
                return;
            }
            match rx.recv_timeout(POLL) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Debounce: wait for a quiet period.
            loop {
                match rx.recv_timeout(debounce) {
                    Ok(()) => continue,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if stop_thread.load(Ordering::Relaxed) {
                return;
            }
            on_change(Renderer::load(&thread_dir));
        })
        .map_err(|source| RenderError::Io {
            path: dir.clone(),
            source,
        })?;
    Ok(TemplateWatcher {
        watcher: Some(watcher),
        stop,
        thread: Some(thread),
    })
}

fn watch_err(dir: &Path, e: notify::Error) -> RenderError {
    RenderError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other(format!("cannot watch the template directory: {e}")),
    }
}
