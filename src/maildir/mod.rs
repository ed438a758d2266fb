//! Maildir++ import and export (the filesystem layer is being written).
use crate::store::Store;
use std::path::Path;

pub fn import(
    _store: &Store,
    _user: &str,
    _path: &Path,
    _progress: bool,
) -> Result<String, crate::store::StoreError> {
    Err(crate::store::StoreError::Invalid("not yet".into()))
}
pub fn export(
    _store: &Store,
    _user: &str,
    _path: &Path,
) -> Result<String, crate::store::StoreError> {
    Err(crate::store::StoreError::Invalid("not yet".into()))
}
