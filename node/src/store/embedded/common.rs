//! What the parts of the embedded store share: the handle, the blocking
//! pool, the mapping of redb errors and the JSON form of records.

use crate::store::shared::encode_json;
use redb::Database;
use ringlimit_actors::storage::StoreError;
use std::path::PathBuf;
use std::sync::Arc;

/// The embedded store. Cloning shares the open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    pub(super) db: Arc<Database>,
    pub(super) path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Runs `f` right here when the caller is a background runtime's own
    /// thread (the write-behind's: see [`crate::background`]), which may
    /// block; `None` elsewhere, where [`Self::blocking`] must be used. The
    /// caller's data is borrowed, not copied for another thread.
    pub(super) fn inline<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        crate::background::on_background_thread().then(|| f(&self.db))
    }

    /// Runs `f` on the blocking pool.
    pub(super) async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) if e.is_cancelled() => Err(StoreError::Unavailable(
                "store task cancelled (shutting down)".into(),
            )),
            Err(e) => Err(StoreError::Backend(format!("store task panicked: {e}"))),
        }
    }
}

/// Maps a redb error: I/O hiccups that a retry may cure are transient,
/// corruption is [`StoreError::Corrupt`], everything else a backend failure.
pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    use std::io::ErrorKind;
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!("redb: {msg}")),
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::Interrupted
                    | ErrorKind::TimedOut
                    | ErrorKind::WouldBlock
                    | ErrorKind::ResourceBusy
            ) =>
        {
            StoreError::Unavailable(format!("redb I/O: {io}"))
        }
        e => StoreError::Backend(format!("redb: {e}")),
    }
}

/// A record as JSON bytes (see [`encode_json`]).
pub(super) fn encode<T: serde::Serialize>(
    what: &str,
    id: &str,
    v: &T,
) -> Result<Vec<u8>, StoreError> {
    encode_json(what, id, v).map(String::into_bytes)
}
