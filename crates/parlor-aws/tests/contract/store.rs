//! The store contract against [`DynamoStore`] on DynamoDB Local, one set of tables per test.
//!
//! The emulator comes from `PARLOR_TEST_DYNAMODB_URL`; each test creates its tables under a
//! prefix of its own (`t<uuid>-`) and deletes them at the end. No emulator fails the test:
//! run `eval "$(scripts/services up)"` first.

use std::sync::Arc;

use futures::future::BoxFuture;
use parlor_aws::AwsOptions;
use parlor_aws::store::DynamoStore;
use parlor_core::ports::Store;
use parlor_testkit::store::StoreFixture;
use uuid::Uuid;

struct DynamoFixture {
    store: Arc<DynamoStore>,
    client: aws_sdk_dynamodb::Client,
    prefix: String,
}

/// A client for the emulator, or a failed test that says how to start it.
async fn client() -> aws_sdk_dynamodb::Client {
    let url = std::env::var("PARLOR_TEST_DYNAMODB_URL").unwrap_or_else(|_| {
        panic!(
            "PARLOR_TEST_DYNAMODB_URL is not set: start DynamoDB Local (and get the variable) \
             with: eval \"$(scripts/services up)\""
        )
    });
    AwsOptions {
        endpoint: Some(url),
        ..Default::default()
    }
    .dynamodb()
    .await
}

impl DynamoFixture {
    async fn new() -> DynamoFixture {
        let client = client().await;
        let prefix = format!("t{}-", Uuid::now_v7().simple());
        let store = DynamoStore::open(client.clone(), &prefix, true)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "create tables {prefix}*: {error}\n\
                     Is DynamoDB Local running? eval \"$(scripts/services up)\""
                )
            });
        DynamoFixture {
            store: Arc::new(store),
            client,
            prefix,
        }
    }
}

impl StoreFixture for DynamoFixture {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn open_another(&self) -> BoxFuture<'_, Arc<dyn Store>> {
        Box::pin(async move {
            let store = DynamoStore::open(self.client.clone(), &self.prefix, false)
                .await
                .expect("open another store");
            Arc::new(store) as Arc<dyn Store>
        })
    }
}

impl Drop for DynamoFixture {
    /// Deletes the test's tables, best effort, on a thread of its own: `drop` cannot await,
    /// and the test's runtime may be going away.
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime
                .block_on(async {
                    // A client of this runtime's own: the test's may be going away with it.
                    let store = DynamoStore::open(client().await, &prefix, false).await?;
                    store.delete_tables().await
                })
                .map_err(|error| error.to_string())
        })
        .join();
        if let Ok(Err(error)) = deleted {
            eprintln!("could not delete test tables {}*: {error}", self.prefix);
        }
    }
}

parlor_testkit::store_contract!(DynamoFixture::new().await);
