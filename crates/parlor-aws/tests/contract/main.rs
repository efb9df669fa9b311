//! The ports' contract suites against the AWS backends, on local emulators (DynamoDB Local,
//! ministack) that `scripts/services up` starts: `PARLOR_TEST_DYNAMODB_URL`,
//! `PARLOR_TEST_SQS_URL`. A missing variable fails the test: nothing is skipped silently.

mod queue;
mod registry;
mod store;
