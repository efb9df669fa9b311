// The queue contract against the embedded backend.
