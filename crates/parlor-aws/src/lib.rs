//! Parlor's AWS backends, the third deployment: SQS FIFO queues with dead-letter queues
//! (`sqs`), a DynamoDB `Store` (`store`), the connection registry and presence in DynamoDB
//! (`registry`), and one SQS queue per gateway node as the `Relay` (`relay`).
//!
//! Every client is built from one [`AwsOptions`]: the region, and an endpoint that points the
//! SDK at a local emulator (DynamoDB Local, ministack) in tests and on a developer's machine.

mod base64;
pub mod config;
pub mod registry;
pub mod relay;
pub mod sqs;
pub mod store;

pub use config::AwsOptions;
