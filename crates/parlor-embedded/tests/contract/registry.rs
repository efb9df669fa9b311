// The registry contract against the embedded backend.
