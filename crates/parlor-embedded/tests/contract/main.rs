mod queue;
mod registry;
mod store;
