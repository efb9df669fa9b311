//! Creating the bucket (`S3Options::create_bucket`): object_store reads and writes objects
//! only, so this one request is signed with its authorizer and sent with reqwest.

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::HttpRequestBody;
use parlor_core::BackendError;

use crate::options::S3Options;

/// Creates the bucket; `Ok` if this account has it already.
pub(crate) async fn create_bucket(
    client: &AmazonS3,
    options: &S3Options,
) -> Result<(), BackendError> {
    let url = bucket_url(options);
    // us-east-1 is the default location and refuses to be named as a constraint.
    let body = if options.region == "us-east-1" {
        String::new()
    } else {
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            options.region
        )
    };
    let credential = client
        .credentials()
        .get_credential()
        .await
        .map_err(|error| unavailable("get credentials", error))?;
    let mut request = http::Request::builder()
        .method(http::Method::PUT)
        .uri(&url)
        .body(HttpRequestBody::from(body.clone()))
        .map_err(|error| {
            BackendError::rejected(format!("s3: bad bucket url {url}: {error}")).with_source(error)
        })?;
    AwsAuthorizer::new(&credential, "s3", &options.region)
        .try_authorize(&mut request, None)
        .map_err(|error| unavailable("sign create bucket", error))?;

    let http = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .read_timeout(options.read_timeout)
        .build()
        .map_err(|error| unavailable("build an http client", error))?;
    let mut outgoing = reqwest::Request::new(
        http::Method::PUT,
        url.parse()
            .map_err(|error| unavailable("parse the bucket url", error))?,
    );
    *outgoing.headers_mut() = request.into_parts().0.headers;
    *outgoing.body_mut() = Some(body.into());
    let response = http
        .execute(outgoing)
        .await
        .map_err(|error| unavailable(&format!("create bucket {}", options.bucket), error))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() || text.contains("BucketAlreadyOwnedByYou") {
        return Ok(());
    }
    let message = format!(
        "s3: create bucket {}: {status}: {}",
        options.bucket,
        text.trim()
    );
    // Taken by another account: no retry will change that.
    if text.contains("BucketAlreadyExists") {
        Err(BackendError::rejected(message))
    } else {
        Err(BackendError::unavailable(message))
    }
}

/// The bucket's own URL, as object_store addresses it: with an endpoint and virtual-hosted
/// requests, the endpoint is the bucket's.
fn bucket_url(options: &S3Options) -> String {
    match (&options.endpoint, options.path_style) {
        (Some(endpoint), true) => format!("{}/{}", endpoint.trim_end_matches('/'), options.bucket),
        (Some(endpoint), false) => endpoint.trim_end_matches('/').to_owned(),
        (None, true) => format!(
            "https://s3.{}.amazonaws.com/{}",
            options.region, options.bucket
        ),
        (None, false) => format!(
            "https://{}.s3.{}.amazonaws.com",
            options.bucket, options.region
        ),
    }
}

fn unavailable(doing: &str, error: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::unavailable(format!("s3: {doing}: {error}")).with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_url_follows_the_addressing_style() {
        let mut options = S3Options::new("eu-west-1", "blobs");
        assert_eq!(
            bucket_url(&options),
            "https://blobs.s3.eu-west-1.amazonaws.com"
        );
        options.path_style = true;
        assert_eq!(
            bucket_url(&options),
            "https://s3.eu-west-1.amazonaws.com/blobs"
        );
        options.endpoint = Some("http://127.0.0.1:4566/".into());
        assert_eq!(bucket_url(&options), "http://127.0.0.1:4566/blobs");
        options.path_style = false;
        options.endpoint = Some("https://blobs.minio.example".into());
        assert_eq!(bucket_url(&options), "https://blobs.minio.example");
    }
}
