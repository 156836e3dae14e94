//! Policy: the gateway's rules as plain functions and data, free of hyper, http and tower so
//! they unit-test fast. The layers and handler translate HTTP to these inputs and back.

pub mod attribution;
pub mod catalog;
pub mod failure;
pub mod family;
pub mod image;
pub mod json;
pub mod keys;
pub mod ledger;
pub mod money;
pub mod pricing;
pub mod rate_limit;
pub mod scan;
pub mod secret;
pub mod signing;
pub mod tenants;
pub mod validate;
