// The queue contract against JetStream.
