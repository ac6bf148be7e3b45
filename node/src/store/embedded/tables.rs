//! The tables of the database file (their layout is in the module
//! documentation).

use super::common::db_err;
use redb::{TableDefinition, WriteTransaction};
use ringlimit_actors::storage::StoreError;

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "ringlimit.redb";

pub(super) const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
pub(super) const TIERS: TableDefinition<&str, &[u8]> = TableDefinition::new("tiers");
pub(super) const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
pub(super) type UsageKey = (&'static str, u8, u64, &'static str);
pub(super) const USAGE: TableDefinition<UsageKey, u64> = TableDefinition::new("usage");
pub(super) type TimeKey = (u64, &'static str);
pub(super) const VIOLATIONS: TableDefinition<TimeKey, &[u8]> = TableDefinition::new("violations");
pub(super) type KeyTimeKey = (&'static str, u64, &'static str);
pub(super) const VIOLATIONS_BY_KEY: TableDefinition<KeyTimeKey, ()> =
    TableDefinition::new("violations_by_key");
pub(super) const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
pub(super) const AUDIT: TableDefinition<TimeKey, &[u8]> = TableDefinition::new("audit");
pub(super) const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
pub(super) const ALERTS_BY_TIME: TableDefinition<TimeKey, ()> =
    TableDefinition::new("alerts_by_time");
pub(super) const ALERTS_BY_KEY: TableDefinition<KeyTimeKey, ()> =
    TableDefinition::new("alerts_by_key");
pub(super) const DEAD_LETTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("dead_letters");
pub(super) const DEAD_BY_TIME: TableDefinition<TimeKey, ()> =
    TableDefinition::new("dead_letters_by_time");
pub(super) type BillingKey = (&'static str, u64);
pub(super) const BILLING: TableDefinition<BillingKey, &[u8]> = TableDefinition::new("billing");
pub(super) type PeriodKey = (u64, &'static str);
pub(super) const BILLING_BY_PERIOD: TableDefinition<PeriodKey, ()> =
    TableDefinition::new("billing_by_period");

/// Creates every table (those that exist are left as they are).
pub(super) fn create_all(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(KEYS).map_err(db_err)?;
    tx.open_table(TIERS).map_err(db_err)?;
    tx.open_table(SNAPSHOTS).map_err(db_err)?;
    tx.open_table(USAGE).map_err(db_err)?;
    tx.open_table(VIOLATIONS).map_err(db_err)?;
    tx.open_table(VIOLATIONS_BY_KEY).map_err(db_err)?;
    tx.open_table(BLOCKS).map_err(db_err)?;
    tx.open_table(AUDIT).map_err(db_err)?;
    tx.open_table(ALERTS).map_err(db_err)?;
    tx.open_table(ALERTS_BY_TIME).map_err(db_err)?;
    tx.open_table(ALERTS_BY_KEY).map_err(db_err)?;
    tx.open_table(DEAD_LETTERS).map_err(db_err)?;
    tx.open_table(DEAD_BY_TIME).map_err(db_err)?;
    tx.open_table(BILLING).map_err(db_err)?;
    tx.open_table(BILLING_BY_PERIOD).map_err(db_err)?;
    Ok(())
}

/// Tables that older versions wrote and nothing reads any more: `key_hashes`
/// (secret hash to key_id).
pub(super) const RETIRED: &[&str] = &["key_hashes"];

/// Deletes the [`RETIRED`] tables a file written by an older version may
/// still hold (a table that is not there is left alone).
pub(super) fn delete_retired(tx: &WriteTransaction) -> Result<(), StoreError> {
    for name in RETIRED {
        // Deleting a table does not look at its key and value types.
        tx.delete_table(TableDefinition::<(), ()>::new(name))
            .map_err(db_err)?;
    }
    Ok(())
}
