//! Policy: the gateway's rules as plain functions and data, free of hyper, http and tower so
//! they unit-test fast. The layers and handler translate HTTP to these inputs and back.

pub(crate) mod attribution;
pub mod callback;
pub mod catalog;
pub(crate) mod failure;
pub mod family;
pub mod image;
pub(crate) mod json;
pub mod keys;
pub(crate) mod ledger;
pub mod money;
pub(crate) mod pricing;
pub mod rate_limit;
pub(crate) mod scan;
pub(crate) mod secret;
pub mod signing;
pub mod tenants;
pub mod validate;
