//! ScyllaDB side of the pipeline tables. PLACEHOLDER while the real adapter
//! is written: every call fails with a backend error.

use super::ScyllaStore;
use async_trait::async_trait;
use ringlimit_actors::storage::{
    AlertStore, AuditStore, BillingStore, BlockStore, Range, StoreError, ViolationStore,
};
use ringlimit_protocol::pipeline::{
    Alert, AuditEntry, BillingRecord, DeadLetter, IpBlock, Violation,
};

fn missing() -> StoreError {
    StoreError::Backend("pipeline tables are not implemented on ScyllaDB yet".into())
}

#[async_trait]
impl ViolationStore for ScyllaStore {
    async fn write_violations(&self, _: &[Violation]) -> Result<(), StoreError> {
        Err(missing())
    }
    async fn list_violations(
        &self,
        _: Option<&str>,
        _: Range,
    ) -> Result<Vec<Violation>, StoreError> {
        Err(missing())
    }
}

#[async_trait]
impl BlockStore for ScyllaStore {
    async fn put_block(&self, _: &IpBlock) -> Result<(), StoreError> {
        Err(missing())
    }
    async fn list_blocks(&self) -> Result<Vec<IpBlock>, StoreError> {
        Err(missing())
    }
    async fn delete_block(&self, _: &str) -> Result<bool, StoreError> {
        Err(missing())
    }
}

#[async_trait]
impl AuditStore for ScyllaStore {
    async fn append_audit(&self, _: &[AuditEntry]) -> Result<(), StoreError> {
        Err(missing())
    }
    async fn list_audit(&self, _: Range) -> Result<Vec<AuditEntry>, StoreError> {
        Err(missing())
    }
}

#[async_trait]
impl AlertStore for ScyllaStore {
    async fn put_alert(&self, _: &Alert) -> Result<(), StoreError> {
        Err(missing())
    }
    async fn get_alert(&self, _: &str) -> Result<Option<Alert>, StoreError> {
        Err(missing())
    }
    async fn list_alerts(&self, _: Option<&str>, _: Range) -> Result<Vec<Alert>, StoreError> {
        Err(missing())
    }
    async fn put_dead_letter(&self, _: &DeadLetter) -> Result<(), StoreError> {
        Err(missing())
    }
    async fn get_dead_letter(&self, _: &str) -> Result<Option<DeadLetter>, StoreError> {
        Err(missing())
    }
    async fn list_dead_letters(&self, _: Range) -> Result<Vec<DeadLetter>, StoreError> {
        Err(missing())
    }
    async fn delete_dead_letter(&self, _: &str) -> Result<bool, StoreError> {
        Err(missing())
    }
}

#[async_trait]
impl BillingStore for ScyllaStore {
    async fn put_billing(&self, _: &BillingRecord) -> Result<(), StoreError> {
        Err(missing())
    }
    async fn get_billing(&self, _: &str, _: u64) -> Result<Option<BillingRecord>, StoreError> {
        Err(missing())
    }
    async fn list_billing_for_key(
        &self,
        _: &str,
        _: usize,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        Err(missing())
    }
    async fn list_billing_for_period(&self, _: u64) -> Result<Vec<BillingRecord>, StoreError> {
        Err(missing())
    }
}
