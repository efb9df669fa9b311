//! How every AWS client of Parlor is configured.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Where the AWS services are: production leaves `endpoint` empty (the SDK's own resolution,
/// credentials from the environment, the task role or the instance profile); tests point it
/// at an emulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AwsOptions {
    /// `None`: the region the environment names (`AWS_REGION`), else `us-east-1`.
    pub region: Option<String>,
    /// An endpoint for every service (an emulator's), e.g. `http://127.0.0.1:4566`.
    pub endpoint: Option<String>,
    /// DynamoDB's own endpoint when it differs from `endpoint` (DynamoDB Local beside an
    /// emulator of the other services).
    pub dynamodb_endpoint: Option<String>,
}

impl AwsOptions {
    /// The SDK's shared configuration. With an endpoint and no credentials in the
    /// environment, fixed test credentials (emulators check none).
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        let region = self
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        loader = loader.region(Region::new(region));
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if self.endpoint.is_some() && std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "parlor-emulator",
            ));
        }
        loader.load().await
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let shared = self.sdk_config().await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&shared);
        if let Some(endpoint) = &self.dynamodb_endpoint {
            config = config.endpoint_url(endpoint);
        }
        aws_sdk_dynamodb::Client::from_conf(config.build())
    }
}
