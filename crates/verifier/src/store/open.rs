//! Choosing a store at run time from an address: `sqlite:PATH` or `postgres://...`.

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Store, StoreError};

/// Opens the store named by `address` and runs its migrations:
/// - `sqlite:PATH` (or `sqlite://PATH`): an SQLite file, created if missing;
/// - `postgres://...` or `postgresql://...`: a PostgreSQL database.
///
/// # Errors
/// [`StoreError::BadAddress`] for any other form; otherwise what opening the store gives.
pub fn open_store(address: &str) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = address
        .strip_prefix("sqlite://")
        .or_else(|| address.strip_prefix("sqlite:"))
    {
        if path.is_empty() {
            return Err(StoreError::BadAddress);
        }
        return Ok(Box::new(SqliteStore::open(path)?));
    }
    if address.starts_with("postgres://") || address.starts_with("postgresql://") {
        return Ok(Box::new(PgStore::connect(address)?));
    }
    Err(StoreError::BadAddress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(open_store("mysql://x").err(), Some(StoreError::BadAddress));
        assert_eq!(open_store("sqlite:").err(), Some(StoreError::BadAddress));
        assert_eq!(open_store("/tmp/x.db").err(), Some(StoreError::BadAddress));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        assert!(open_store(&format!("sqlite:{}", path.display())).is_ok());
        assert!(path.exists());
    }
}
