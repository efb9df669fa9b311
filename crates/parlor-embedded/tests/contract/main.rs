mod blobs;
mod queue;
mod registry;
mod store;
