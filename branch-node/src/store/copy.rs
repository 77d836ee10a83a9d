//! A whole database copied page by page with SQLite's backup API: what `branch-node
//! backup` writes and what a replica's snapshot carries.

use std::time::Duration;

use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};

/// How often a busy database is tried again, and how long apart (milliseconds).
const COPY_TRIES_MAX: u32 = 500;
const COPY_RETRY_MS: u64 = 10;

/// Why a copy did not finish.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database stayed busy ({0}); try again")]
    Busy(String),
}

/// Copies every page of `src`'s database over `dst`'s with SQLite's backup API, in
/// one step, so no write to `src` lands between pages of the copy. Busy or locked
/// (the node checkpointing): tries again a few times.
pub fn copy_pages(src: &Connection, dst: &mut Connection) -> Result<(), CopyError> {
    let b = Backup::new(src, dst)?;
    let mut tries = 0;
    loop {
        match b.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            _ if tries < COPY_TRIES_MAX => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(COPY_RETRY_MS));
            }
            other => return Err(CopyError::Busy(format!("{other:?}"))),
        }
    }
}
