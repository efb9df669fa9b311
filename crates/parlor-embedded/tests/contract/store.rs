// The store contract against the embedded backend.
