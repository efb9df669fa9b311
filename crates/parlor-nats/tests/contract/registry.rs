// The registry, presence and relay contracts against NATS.
